"""One-call API: a model (and its preprocessing, and its tokenizer) from a name, a config or a checkpoint.

`name_or_config` may be a bundled config name (`list_models()`), a config dict (or a hub-style dict with
`model_cfg`), a path to a JSON config, a model folder (`open_clip_config.json` + weights, e.g. from
`save_pretrained`), or `hf-hub:org/repo`. Folders and hub repos bring their own weights and
preprocessing; `pretrained` (a file, folder or `hf-hub:` name) loads weights into any of them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipstack.errors import ConfigError
from clipstack.io import read_json
from clipstack.models.clip import CLIP
from clipstack.models.config import (
    ModelCfg,
    apply_overrides,
    get_model_config,
    read_config_file,
    tokenizer_settings,
)
from clipstack.models.pretrained import (
    CONFIG_NAME,
    HF_HUB_PREFIX,
    hub_download,
    load_checkpoint,
)
from clipstack.models.tokenizer import Tokenizer

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_PREPROCESS_KEYS = ("size", "mean", "std", "interpolation", "resize_mode", "fill_color")


def resolve_config(name_or_config: str | dict | Path) -> tuple[dict, dict, str | Path | None, str]:
    """(model_cfg, preprocess_cfg, weights or None, a source label for messages); weights is a model
    folder or `hf-hub:` name when the model brings its own, loaded (and checked) by load_checkpoint."""
    if isinstance(name_or_config, dict):
        cfg = copy.deepcopy(name_or_config)
        if "model_cfg" in cfg:
            return cfg["model_cfg"], cfg.get("preprocess_cfg", {}), None, "config dict"
        return cfg, {}, None, "config dict"
    text = str(name_or_config)
    if text.startswith(HF_HUB_PREFIX):
        repo = text[len(HF_HUB_PREFIX):]
        full = read_config_file_raw(hub_download(repo, CONFIG_NAME))
        return full["model_cfg"], full.get("preprocess_cfg", {}), text, text  # weights fetched on load
    if text.startswith("local-dir:"):
        text = text[len("local-dir:"):]
    path = Path(text)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise ConfigError(f"{path}: model folder has no {CONFIG_NAME}")
        full = read_config_file_raw(path / CONFIG_NAME)
        # A model folder always brings its weights: the folder itself goes to load_checkpoint, which
        # names the folder and the files it looked for when none is there, rather than random weights.
        return full["model_cfg"], full.get("preprocess_cfg", {}), path, str(path)
    if path.suffix == ".json" or path.is_file():
        if path.suffix != ".json":
            raise ConfigError(f"{path}: a checkpoint file needs a config; use "
                              f"create_model(CONFIG_NAME, pretrained='{path}')")
        return read_config_file(path), {}, None, str(path)
    return get_model_config(text), {}, None, text


def read_config_file_raw(path: str | Path) -> dict:
    """A hub-style `open_clip_config.json` ({model_cfg, preprocess_cfg})."""
    full = read_json(path, "model config")  # DataError naming the file: unreadable, not UTF-8, not JSON
    if not isinstance(full, dict) or "model_cfg" not in full:
        raise ConfigError(f"{path}: expected an object with 'model_cfg' (and 'preprocess_cfg')")
    if not isinstance(full.get("preprocess_cfg", {}), dict):
        raise ConfigError(f"{path}: preprocess_cfg must be an object, got {full['preprocess_cfg']!r}")
    return full


def default_preprocess_cfg(model: CLIP, overlay: dict | None = None) -> dict:
    cfg: dict[str, Any] = {"size": list(model.image_size), "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
    cfg.update({k: v for k, v in (overlay or {}).items() if k in _PREPROCESS_KEYS and v is not None})
    cfg["size"] = list(model.image_size)  # the model's input size wins over a stale saved one
    return cfg


def create_model(
    name_or_config: str | dict | Path,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> CLIP:
    """Build a model; load weights from the folder/hub it names or from `pretrained`.

    overrides: top-level config keys (`quick_gelu`, `init_logit_bias`, `embed_dim`...), `vision_cfg`/
    `text_cfg` dicts merged into the config's, or `image_size`, `context_length`, `patch_dropout`."""
    model_cfg, preprocess, weights, source = resolve_config(name_or_config)
    model_cfg = apply_overrides(model_cfg, overrides)
    model = CLIP(ModelCfg.from_dict(model_cfg, source=source))
    weights = pretrained if pretrained is not None else weights
    if weights is not None:
        load_checkpoint(model, weights)
    model.preprocess_cfg = default_preprocess_cfg(model, preprocess)
    return model.to(device)


def create_model_and_transforms(
    name_or_config: str | dict | Path,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
    scale: tuple[float, float] = (0.9, 1.0),
    **overrides: Any,
) -> tuple[CLIP, Callable, Callable]:
    """(model, preprocess_train, preprocess_val), the transforms built from the model's preprocess_cfg."""
    model = create_model(name_or_config, pretrained=pretrained, device=device, **overrides)
    return model, image_transform_for(model, is_train=True, scale=scale), image_transform_for(model, False)


def create_model_from_pretrained(
    name_or_path: str | Path, pretrained: str | Path | None = None, device: str | torch.device = "cpu",
    **overrides: Any,
) -> tuple[CLIP, Callable]:
    """(model in eval mode, preprocess_val) from a model folder, `hf-hub:` repo or name + `pretrained`."""
    model = create_model(name_or_path, pretrained=pretrained, device=device, **overrides).eval()
    return model, image_transform_for(model, is_train=False)


def image_transform_for(model: CLIP, is_train: bool, scale: tuple[float, float] = (0.9, 1.0)) -> Callable:
    from clipstack.data.transforms import image_transform  # lazy: PIL only when transforms are wanted

    cfg = model.preprocess_cfg or default_preprocess_cfg(model)
    kwargs: dict[str, Any] = {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]),
                              "resize_mode": cfg["resize_mode"], "interpolation": cfg["interpolation"]}
    if is_train:
        kwargs["scale"] = scale
    return image_transform(tuple(model.image_size), is_train=is_train, **kwargs)


def get_tokenizer(name_or_config: str | dict | Path = "ViT-B-32", context_length: int | None = None) -> Tokenizer:
    """The CLIP BPE tokenizer set to the model's context length (and its cleaning mode, if the config
    names one). Configs that need a Hugging Face tokenizer (e.g. OpenCLIP's timm SigLIP) are refused."""
    model_cfg, _, _, source = resolve_config(name_or_config)
    length, clean = tokenizer_settings(model_cfg, source)
    hf_name = model_cfg["text_cfg"].get("hf_tokenizer_name") if "text_cfg" in model_cfg else None
    if hf_name:
        raise ConfigError(f"{source}: text_cfg.hf_tokenizer_name={hf_name!r} needs a "
                          "Hugging Face tokenizer; clipstack ships only the CLIP BPE tokenizer")
    return Tokenizer(context_length=context_length or length, clean=clean)
