"""Models: OpenCLIP-compatible CLIP/SigLIP dual encoders, the CLIP BPE tokenizer, and checkpoint IO.

    model, preprocess_train, preprocess_val = create_model_and_transforms("clip-tiny")
    tokenizer = get_tokenizer("clip-tiny")
    image_emb = model.encode_image(images, normalize=True)
    text_emb = model.encode_text(tokenizer(["a photo of a cat"]), normalize=True)
    save_pretrained(model, "out/model")          # open_clip can load this folder too
    model = create_model("out/model")            # or "hf-hub:org/repo", or ("ViT-B-32", pretrained=path)

Names resolve on first use, so `import clipstack.models.cli` (and `clipstack --help`) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipstack.lazy import lazy_attributes

_LAZY = {
    "CLIP": "clipstack.models.clip",
    "TowerOutput": "clipstack.models.layers",
    "Tokenizer": "clipstack.models.tokenizer",
    "get_model_config": "clipstack.models.config",
    "list_models": "clipstack.models.config",
    "create_model": "clipstack.models.factory",
    "create_model_and_transforms": "clipstack.models.factory",
    "create_model_from_pretrained": "clipstack.models.factory",
    "get_tokenizer": "clipstack.models.factory",
    "load_checkpoint": "clipstack.models.pretrained",
    "read_state_dict": "clipstack.models.pretrained",
    "save_pretrained": "clipstack.models.pretrained",
    "pack_for_inference": "clipstack.models.inference",
}

if TYPE_CHECKING:  # pragma: no cover
    from clipstack.models.clip import CLIP  # noqa: F401
    from clipstack.models.config import get_model_config, list_models  # noqa: F401
    from clipstack.models.factory import (  # noqa: F401
        create_model,
        create_model_and_transforms,
        create_model_from_pretrained,
        get_tokenizer,
    )
    from clipstack.models.inference import pack_for_inference  # noqa: F401
    from clipstack.models.layers import TowerOutput  # noqa: F401
    from clipstack.models.pretrained import load_checkpoint, read_state_dict, save_pretrained  # noqa: F401
    from clipstack.models.tokenizer import Tokenizer  # noqa: F401


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = list(_LAZY)
