"""Model configs in OpenCLIP's JSON format: parse, validate, and look up the bundled ones by name.

A config is `{"embed_dim", "vision_cfg", "text_cfg", optional "quick_gelu", "init_logit_bias",
"init_logit_scale", "custom_text"}`. A list of stage depths in `vision_cfg.layers` builds a ResNet
tower (RN50 style). Fields this implementation does not support (timm or Hugging Face towers,
attentional pooling, CoCa's text CLS token...) raise a ConfigError naming the field rather than being
silently ignored. Every field the towers read is checked for type and range (`text_cfg.heads: must be
>= 1, got 0`) before any tensor is built, so a bad value is one message, not a torch traceback, a
multi-terabyte allocation or a silently degenerate model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipstack.errors import ConfigError
from clipstack.io import read_json

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


# Upper bounds: far beyond any real CLIP (ViT-bigG: width 1664, 48 layers, ~2.5 B parameters), but small
# enough that a typo (embed_dim 1e10, an extra zero) is a message instead of an allocator failure.
_MAX_WIDTH = 65536  # embed_dim, tower widths, heads, context_length
_MAX_LAYERS = 1024
_MAX_IMAGE = 16384
_MAX_VOCAB = 1 << 24
_MAX_PARAMS = 20e9  # ~80 GB of float32 weights


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    """`value` if it is an integer in [lo, hi]; bool is refused though Python counts it as an int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if value < lo:
        raise ConfigError(f"{where}: must be >= {lo}, got {value}")
    if value > hi:
        raise ConfigError(f"{where}: must be <= {hi}, got {value}")
    return value


def _number(value: Any, where: str, positive: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number{' or null' if optional else ''}, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value}")


def _bool(value: Any, where: str) -> None:
    # bool("false") is True: a quoted or numeric flag would silently flip the model, so only true/false
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: must be true or false, got {value!r}")


def _check_common(tower: VisionCfg | TextCfg, at: str) -> None:
    """The fields both towers read the same way."""
    _number(tower.mlp_ratio, at + "mlp_ratio", positive=True)
    _number(tower.ls_init_value, at + "ls_init_value", optional=True)
    if not isinstance(tower.norm_kwargs, dict):
        raise ConfigError(f"{at}norm_kwargs: must be an object, got {tower.norm_kwargs!r}")
    if "eps" in tower.norm_kwargs:
        _number(tower.norm_kwargs["eps"], at + "norm_kwargs.eps", positive=True)
    if not isinstance(tower.pool_type, str):
        raise ConfigError(f"{at}pool_type: must be a string, got {tower.pool_type!r}")


def _image_size(vision: VisionCfg, at: str) -> tuple[int, int]:
    size = vision.image_size
    if isinstance(size, list | tuple):
        if len(size) != 2:
            raise ConfigError(f"{at}image_size: must be one size or [height, width], got {size!r}")
        return (_int(size[0], f"{at}image_size[0]", 1, _MAX_IMAGE),
                _int(size[1], f"{at}image_size[1]", 1, _MAX_IMAGE))
    side = _int(size, at + "image_size", 1, _MAX_IMAGE)
    return side, side


def _check_vision(vision: VisionCfg, source: str) -> None:
    at = f"{source}: vision_cfg."
    size = _image_size(vision, at)
    _check_common(vision, at)
    _bool(vision.no_ln_pre, at + "no_ln_pre")
    _bool(vision.final_ln_after_pool, at + "final_ln_after_pool")
    if is_resnet(vision):
        if len(vision.layers) != 4 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                               for n in vision.layers):
            raise ConfigError(f"{source}: vision_cfg.layers={vision.layers}; a ResNet tower takes four "
                              "positive stage depths, e.g. [3, 4, 6, 3]")
        for i, depth in enumerate(vision.layers):
            _int(depth, f"{at}layers[{i}]", 1, _MAX_LAYERS)
        if any(s % 32 for s in size):
            raise ConfigError(f"{source}: vision_cfg.image_size={vision.image_size}; a ResNet tower "
                              "downsamples 32x, so use a multiple of 32")
        # the stem halves the width and the last stage has width*32 channels
        _int(vision.width, at + "width", 2, _MAX_WIDTH // 32)
        _int(vision.head_width, at + "head_width", 1, _MAX_WIDTH)
        if (vision.width * 32) % vision.head_width:
            raise ConfigError(f"{source}: vision_cfg.width*32 = {vision.width * 32} is not a multiple of "
                              f"head_width {vision.head_width}")
        return
    if vision.patch_size is None:
        raise ConfigError(f"{source}: vision_cfg.patch_size=None; a ViT needs a positive size")
    _int(vision.patch_size, at + "patch_size", 1, _MAX_IMAGE)
    if min(size) < vision.patch_size:
        raise ConfigError(f"{at}image_size: must be >= patch_size {vision.patch_size}, "
                          f"got {vision.image_size}")
    _int(vision.layers, at + "layers", 1, _MAX_LAYERS)
    _int(vision.width, at + "width", 1, _MAX_WIDTH)
    _int(vision.head_width, at + "head_width", 1, _MAX_WIDTH)
    if vision.width % vision.head_width:
        raise ConfigError(f"{source}: vision_cfg.width {vision.width} is not a multiple of "
                          f"head_width {vision.head_width}")
    _number(vision.patch_dropout, at + "patch_dropout")
    if not 0 <= vision.patch_dropout < 1:
        raise ConfigError(f"{source}: vision_cfg.patch_dropout={vision.patch_dropout} must be in [0, 1)")


def _check_text(text: TextCfg, source: str) -> None:
    at = f"{source}: text_cfg."
    _int(text.context_length, at + "context_length", 2, _MAX_WIDTH)  # start and end tokens take two
    _int(text.vocab_size, at + "vocab_size", 1, _MAX_VOCAB)
    _int(text.width, at + "width", 1, _MAX_WIDTH)
    _int(text.heads, at + "heads", 1, _MAX_WIDTH)
    _int(text.layers, at + "layers", 1, _MAX_LAYERS)
    if text.width % text.heads:
        raise ConfigError(f"{source}: text_cfg.width {text.width} is not divisible by heads {text.heads}")
    _check_common(text, at)
    for name in ("no_causal_mask", "proj_bias"):
        _bool(getattr(text, name), at + name)
    for name in ("pad_id", "eos_id"):  # only compared with token ids, so any id is safe
        _int(getattr(text, name), at + name, 0, _MAX_VOCAB)
    for name in ("hf_tokenizer_name", "tokenizer_mode"):
        if getattr(text, name) is not None and not isinstance(getattr(text, name), str):
            raise ConfigError(f"{at}{name}: must be a string or null, got {getattr(text, name)!r}")
    if text.tokenizer_kwargs is not None and not isinstance(text.tokenizer_kwargs, dict):
        raise ConfigError(f"{at}tokenizer_kwargs: must be an object or null, got {text.tokenizer_kwargs!r}")


def _parameter_estimate(embed_dim: int, vision: VisionCfg, text: TextCfg) -> float:
    """Roughly how many weights the config describes (each field may be sane while the product is not)."""
    t_width = text.width
    count = (text.vocab_size + text.context_length + embed_dim) * t_width
    count += text.layers * (4 + 2 * text.mlp_ratio) * t_width**2  # attention 4 w^2, MLP 2 * ratio * w^2
    size = (vision.image_size,) * 2 if isinstance(vision.image_size, int) else tuple(vision.image_size)
    if is_resnet(vision):
        # a bottleneck of `planes` channels holds ~17 planes^2 weights; the attention pool ~4 (32 w)^2
        count += sum(depth * 17 * (vision.width * 2**i) ** 2 for i, depth in enumerate(vision.layers))
        count += 4 * (32 * vision.width) ** 2 + 32 * vision.width * embed_dim
        return float(count)
    width, patch = vision.width, vision.patch_size
    grid = (size[0] // patch) * (size[1] // patch)
    count += (3 * patch * patch + grid + 1 + embed_dim) * width
    count += vision.layers * (4 + 2 * vision.mlp_ratio) * width**2
    return float(count)


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
        embed_dim = _int(cfg["embed_dim"], f"{source}: embed_dim", 1, _MAX_WIDTH)
        for key in ("quick_gelu", "custom_text"):
            _bool(cfg.get(key, False), f"{source}: {key}")
        _number(cfg.get("init_logit_scale", 0.0), f"{source}: init_logit_scale")
        _number(cfg.get("init_logit_bias"), f"{source}: init_logit_bias", optional=True)
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
        _check_text(text, source)
        params = _parameter_estimate(embed_dim, vision, text)
        if params > _MAX_PARAMS:
            raise ConfigError(f"{source}: the config describes about {params / 1e9:,.0f} billion weights "
                              f"(limit {_MAX_PARAMS / 1e9:.0f} billion); check embed_dim, the widths, layers "
                              "and vocab_size")
        init_bias = cfg.get("init_logit_bias")
        return cls(
            embed_dim=embed_dim,
            vision=vision,
            text=text,
            quick_gelu=bool(cfg.get("quick_gelu", False)),
            init_logit_scale=float(cfg.get("init_logit_scale", math.log(1 / 0.07))),
            init_logit_bias=None if init_bias is None else float(init_bias),
            custom_text=bool(cfg.get("custom_text", False)),
            raw=copy.deepcopy(cfg),
        )


def tokenizer_settings(model_cfg: Any, source: str) -> tuple[int, str]:
    """(context_length, cleaning mode) of a config, checked: the tokenizer needs only these two fields,
    so this does not require the rest of the config to be buildable by clipstack."""
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"{source}: a model config must be a JSON object")
    text_cfg = model_cfg.get("text_cfg", {})
    if not isinstance(text_cfg, dict):
        raise ConfigError(f"{source}: 'text_cfg' must be an object, got {type(text_cfg).__name__}")
    length = _int(text_cfg.get("context_length", 77), f"{source}: text_cfg.context_length", 2, _MAX_WIDTH)
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{source}: text_cfg.tokenizer_kwargs: must be an object or null, got {kwargs!r}")
    clean = kwargs.get("clean", "lower")
    if not isinstance(clean, str):
        raise ConfigError(f"{source}: text_cfg.tokenizer_kwargs.clean: must be a string, got {clean!r}")
    return length, clean


def list_models() -> list[str]:
    """Names of the bundled model configs, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def read_config_file(path: str | Path) -> dict:
    """Read a JSON model config; a hub-style `open_clip_config.json` gives its `model_cfg`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: model config file not found")
    cfg = read_json(path, "model config")  # DataError naming the file: a folder, not UTF-8, not JSON
    if isinstance(cfg, dict) and "model_cfg" in cfg:
        cfg = cfg["model_cfg"]
    return cfg


def get_model_config(name: str) -> dict:
    """The bundled config called `name` (a copy you may edit)."""
    path = CONFIG_DIR / f"{name.replace('/', '-')}.json"
    if not path.is_file():
        raise ConfigError(f"unknown model config '{name}'; available: {', '.join(list_models())}")
    return read_config_file(path)


_SHORTHAND_SECTION = {"image_size": "vision_cfg", "patch_dropout": "vision_cfg", "context_length": "text_cfg"}


def apply_overrides(cfg: dict, overrides: dict) -> dict:
    """Apply `create_model(**overrides)`: top-level keys, `vision_cfg`/`text_cfg` sub-dicts merged, and
    the OpenCLIP shorthands image_size, context_length, patch_dropout, quick_gelu."""
    cfg = copy.deepcopy(cfg)
    if not isinstance(cfg, dict):
        return cfg  # not a config at all: ModelCfg.from_dict says so, naming the source
    for key, value in overrides.items():
        if value is None:
            continue
        section = key if key in ("vision_cfg", "text_cfg") else _SHORTHAND_SECTION.get(key)
        if section is not None and not isinstance(cfg.get(section), dict):
            continue  # a missing or non-object section: ModelCfg.from_dict names it
        if key in ("vision_cfg", "text_cfg"):
            cfg[key] = {**cfg[key], **value}
        elif section is not None:
            cfg[section][key] = value
        else:
            cfg[key] = value
    return cfg
