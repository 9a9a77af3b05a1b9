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


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): they gain
    nothing from a second thread, and on 2 shared cores OpenMP threads waiting on each other make every op
    several times slower. The setting is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
