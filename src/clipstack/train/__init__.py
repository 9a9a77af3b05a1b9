"""train stage: `train(config, callbacks) -> TrainResult` on WebDataset shards, one CPU to torchrun DDP/FSDP.

Light at import: the loop (and torch) load on first use of `train`.
"""

from __future__ import annotations

from clipstack.lazy import lazy_attributes
from clipstack.train.config import TrainConfig, load_config

__all__ = ["train", "TrainConfig", "load_config", "Callback", "StepContext", "TrainResult"]

_LAZY = {"train": "clipstack.train.loop", "TrainResult": "clipstack.train.loop",
         "Callback": "clipstack.train.runlog", "StepContext": "clipstack.train.runlog"}


__getattr__ = lazy_attributes(__name__, _LAZY)
