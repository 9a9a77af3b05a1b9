"""Shared test set-up: open_clip's torchvision import on a CPU-only torch, and small fixtures."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CLIPSTACK_NO_PROGRESS", "1")

# The torchvision wheel pinned beside torch 2.13.0 is a CUDA build whose import registers two operator
# schemas the CPU torch lacks; defining them first lets open_clip (a dev dependency for parity tests)
# import. clipstack itself never imports torchvision.
_TORCHVISION_LIB = None
if torch.version.cuda is None:
    try:
        _TORCHVISION_LIB = torch.library.Library("torchvision", "DEF")
        _TORCHVISION_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (e.g. a real CPU torchvision build)
        pass


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
