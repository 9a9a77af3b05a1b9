"""Model configs in OpenCLIP's JSON format: parse, validate, and look up the bundled ones by name.

A config is `{"embed_dim", "vision_cfg", "text_cfg", optional "quick_gelu", "init_logit_bias",
"init_logit_scale", "custom_text"}`. A list of stage depths in `vision_cfg.layers` builds a ResNet
tower (RN50 style). Fields this implementation does not support (timm or Hugging Face towers,
attentional pooling, CoCa's text CLS token...) raise a ConfigError naming the field rather than being
silently ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipstack.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class VisionCfg:
    image_size: int | tuple[int, int] = 224
    patch_size: int | None = 16  # None for a ResNet tower
    width: int = 768
    layers: int | list[int] = 12  # four stage depths, e.g. [3, 4, 6, 3], make a ResNet tower
    head_width: int = 64
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None
    patch_dropout: float = 0.0
    no_ln_pre: bool = False
    pool_type: str = "tok"  # "tok" (class token), "avg" (mean of patch tokens)
    final_ln_after_pool: bool = False
    norm_kwargs: dict = field(default_factory=dict)


@dataclass
class TextCfg:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None
    no_causal_mask: bool = False
    pool_type: str = "argmax"  # "argmax" (EOT has the highest id), "eos", "first", "last"
    proj_type: str = "linear"  # "linear" or "none"
    proj_bias: bool = False
    pad_id: int = 0
    eos_id: int = 2  # only used by pool_type "eos"
    norm_kwargs: dict = field(default_factory=dict)
    # tokenizer-only fields, kept so a config round-trips; the towers do not read them
    hf_tokenizer_name: str | None = None
    tokenizer_kwargs: dict | None = None
    tokenizer_mode: str | None = None


# OpenCLIP fields we accept only at their default value (anything else needs code we do not have).
_UNSUPPORTED = {
    "vision_cfg": {"timm_model_name": None, "attentional_pool": False, "pos_embed_type": "learnable",
                   "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                   "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "act_kwargs": None},
    "text_cfg": {"hf_model_name": None, "embed_cls": False, "block_type": None, "qk_norm": False,
                 "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                 "scale_attn": False, "scale_fc": False, "act_kwargs": None, "use_pad_mask": False},
}
# Accepted and ignored: they change only how OpenCLIP returns outputs, not the weights or features.
_IGNORED = {"output_tokens", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained",
            "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path",
            "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "layers_per_stage",
            "final_ln_after_pool"}  # OpenCLIP's text tower ignores final_ln_after_pool too
_TOP_LEVEL = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias",
              "custom_text", "nonscalar_logit_scale", "cast_dtype"}


def _tower_cfg(cls: type, section: str, raw: dict, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{section}' must be an object, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key in known:
            kwargs[key] = value
        elif key in _UNSUPPORTED[section]:
            if value != _UNSUPPORTED[section][key] and value:
                raise ConfigError(f"{source}: {section}.{key}={value!r} is not supported by clipstack towers")
        elif key not in _IGNORED:
            raise ConfigError(f"{source}: unknown field {section}.{key}")
    cfg = cls(**kwargs)
    if isinstance(cfg.layers, list | tuple) and section == "text_cfg":
        raise ConfigError(f"{source}: text_cfg.layers must be a number, got {cfg.layers}")
    return cfg


def _check_vision(vision: VisionCfg, source: str) -> None:
    size = (vision.image_size,) * 2 if isinstance(vision.image_size, int) else tuple(vision.image_size)
    if is_resnet(vision):
        if len(vision.layers) != 4 or not all(isinstance(n, int) and n > 0 for n in vision.layers):
            raise ConfigError(f"{source}: vision_cfg.layers={vision.layers}; a ResNet tower takes four "
                              "positive stage depths, e.g. [3, 4, 6, 3]")
        if any(s % 32 for s in size):
            raise ConfigError(f"{source}: vision_cfg.image_size={vision.image_size}; a ResNet tower "
                              "downsamples 32x, so use a multiple of 32")
        if (vision.width * 32) % vision.head_width:
            raise ConfigError(f"{source}: vision_cfg.width*32 = {vision.width * 32} is not a multiple of "
                              f"head_width {vision.head_width}")
        return
    if not isinstance(vision.patch_size, int) or vision.patch_size <= 0:
        raise ConfigError(f"{source}: vision_cfg.patch_size={vision.patch_size!r}; a ViT needs a positive size")
    if vision.width % vision.head_width:
        raise ConfigError(f"{source}: vision_cfg.width {vision.width} is not a multiple of "
                          f"head_width {vision.head_width}")
    if not 0 <= vision.patch_dropout < 1:
        raise ConfigError(f"{source}: vision_cfg.patch_dropout={vision.patch_dropout} must be in [0, 1)")


def is_resnet(vision: VisionCfg) -> bool:
    """A list of stage depths means OpenCLIP's ModifiedResNet, as in its RN50 config."""
    return isinstance(vision.layers, list | tuple)


@dataclass
class ModelCfg:
    embed_dim: int
    vision: VisionCfg
    text: TextCfg
    quick_gelu: bool = False
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    custom_text: bool = False  # OpenCLIP's CustomTextCLIP layout: text weights under `text.`
    raw: dict = field(default_factory=dict)  # the config as given (open_clip format), for saving

    @classmethod
    def from_dict(cls, cfg: dict, source: str = "model config") -> ModelCfg:
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: a model config must be a JSON object")
        for key in ("embed_dim", "vision_cfg", "text_cfg"):
            if key not in cfg:
                raise ConfigError(f"{source}: missing required field '{key}'")
        for key in cfg:
            if key not in _TOP_LEVEL:
                raise ConfigError(f"{source}: unknown field '{key}'")
        if cfg.get("nonscalar_logit_scale"):
            raise ConfigError(f"{source}: nonscalar_logit_scale is not supported")
        vision = _tower_cfg(VisionCfg, "vision_cfg", cfg["vision_cfg"], source)
        text = _tower_cfg(TextCfg, "text_cfg", cfg["text_cfg"], source)
        if vision.pool_type not in ("tok", "avg"):
            raise ConfigError(f"{source}: vision_cfg.pool_type={vision.pool_type!r}; use 'tok' or 'avg'")
        if text.pool_type not in ("argmax", "eos", "first", "last"):
            raise ConfigError(f"{source}: text_cfg.pool_type={text.pool_type!r}; "
                              "use 'argmax', 'eos', 'first' or 'last'")
        if text.proj_type not in ("linear", "none"):
            raise ConfigError(f"{source}: text_cfg.proj_type={text.proj_type!r}; use 'linear' or 'none'")
        _check_vision(vision, source)
        if text.width % text.heads:
            raise ConfigError(f"{source}: text_cfg.width {text.width} is not divisible by heads {text.heads}")
        init_bias = cfg.get("init_logit_bias")
        return cls(
            embed_dim=int(cfg["embed_dim"]),
            vision=vision,
            text=text,
            quick_gelu=bool(cfg.get("quick_gelu", False)),
            init_logit_scale=float(cfg.get("init_logit_scale", math.log(1 / 0.07))),
            init_logit_bias=None if init_bias is None else float(init_bias),
            custom_text=bool(cfg.get("custom_text", False)),
            raw=copy.deepcopy(cfg),
        )


def list_models() -> list[str]:
    """Names of the bundled model configs, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def read_config_file(path: str | Path) -> dict:
    """Read a JSON model config; a hub-style `open_clip_config.json` gives its `model_cfg`."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: model config file not found") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    if isinstance(cfg, dict) and "model_cfg" in cfg:
        cfg = cfg["model_cfg"]
    return cfg


def get_model_config(name: str) -> dict:
    """The bundled config called `name` (a copy you may edit)."""
    path = CONFIG_DIR / f"{name.replace('/', '-')}.json"
    if not path.is_file():
        raise ConfigError(f"unknown model config '{name}'; available: {', '.join(list_models())}")
    return read_config_file(path)


def apply_overrides(cfg: dict, overrides: dict) -> dict:
    """Apply `create_model(**overrides)`: top-level keys, `vision_cfg`/`text_cfg` sub-dicts merged, and
    the OpenCLIP shorthands image_size, context_length, patch_dropout, quick_gelu."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("vision_cfg", "text_cfg"):
            cfg[key] = {**cfg[key], **value}
        elif key in ("image_size", "patch_dropout"):
            cfg["vision_cfg"][key] = value
        elif key == "context_length":
            cfg["text_cfg"][key] = value
        else:
            cfg[key] = value
    return cfg
