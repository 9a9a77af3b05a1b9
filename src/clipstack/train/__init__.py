"""train stage: `train(config, callbacks) -> TrainResult` on WebDataset shards, one CPU to torchrun DDP/FSDP.

Light at import: the loop (and torch) load on first use of `train`.
"""

from __future__ import annotations

from typing import Any

from clipstack.train.config import TrainConfig, load_config

__all__ = ["train", "TrainConfig", "load_config", "Callback", "StepContext", "TrainResult"]

_LAZY = {"train": "clipstack.train.loop", "TrainResult": "clipstack.train.loop",
         "Callback": "clipstack.train.runlog", "StepContext": "clipstack.train.runlog"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipstack.train' has no attribute {name!r}")
