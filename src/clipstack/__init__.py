"""clipstack: contrastive language-image pretraining, from raw pairs to a served index.

The package import stays light: the model API is loaded on first use, and the server, plotting and
FAISS code only when a command needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipstack.lazy import lazy_attributes

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


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = ["__version__", *_LAZY]
