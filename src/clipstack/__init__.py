"""clipstack: contrastive language-image pretraining, from raw pairs to a served index.

The package import stays light: the model API is loaded on first use, and the server, plotting and
FAISS code only when a command needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "clipstack.models",
    "create_model_and_transforms": "clipstack.models",
    "create_model_from_pretrained": "clipstack.models",
    "get_tokenizer": "clipstack.models",
    "list_models": "clipstack.models",
}

if TYPE_CHECKING:  # pragma: no cover
    from clipstack.models import (  # noqa: F401
        create_model,
        create_model_and_transforms,
        create_model_from_pretrained,
        get_tokenizer,
        list_models,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipstack' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
