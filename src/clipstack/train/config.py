"""The training config: typed dataclasses, read from JSON/YAML, overridden by `--section.field value`.

One `TrainConfig` holds every knob of a run, grouped by concern (model, data, optim, schedule, precision,
distributed, checkpoint, logging). `load_config` merges a file and dotted overrides onto the defaults,
converts each value to its field's type and validates it; every error names the dotted field. This
module imports only the standard library so `clipstack train --help` can list every field cheaply.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipstack.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "clip-tiny"  # a model config name, a JSON config path, or a save_pretrained folder
    pretrained: str | None = None
    overrides: dict = field(default_factory=dict)  # passed to create_model (e.g. {"init_logit_bias": -10})
    lock_image: bool = False  # LiT: freeze the image tower
    lock_text: bool = False
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the model


@dataclass
class SourceConfig:
    urls: str | list[str] = ""  # brace patterns, `::`-joined lists, folders or globs of .tar shards
    weight: float = 1.0  # relative share of samples drawn from this source
    name: str = ""


@dataclass
class DataConfig:
    urls: str | list[str] = ""  # shorthand for a single source
    sources: list[SourceConfig] = field(default_factory=list)
    batch_size: int = 32  # global batch (all ranks, one optimizer step, before accumulation split)
    workers: int = 2  # DataLoader workers per rank
    shuffle_buffer: int = 1000  # samples; 0 keeps shard order
    shuffle_shards: bool = True  # reshuffle the shard list every epoch
    resampled: bool = False  # draw shards with replacement (needed when shards < ranks x workers)
    captions_per_image: int = 1  # captions sampled per image per step (each a contrastive view)
    steps_per_epoch: int | None = None  # default: samples in all sources // batch_size
    augment_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])  # random resized crop
    augment_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # crop aspect (1,1: no squash)
    # NegCLIP word-swap hard negatives: groups of interchangeable words, each "w1,w2,..." (CLIP loss
    # scores each image against its caption with one group word swapped, as an extra negative text).
    hard_negatives: list[str] = field(default_factory=list)


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float | None = 1.0  # max global grad norm; null = no clipping
    accum_freq: int = 1  # micro-batches per step (features cached: contrastive over the full batch)


@dataclass
class ScheduleConfig:
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (caps epochs)
    time_budget_s: float | None = None  # stop (and checkpoint) after this much wall time
    kind: str = "cosine"  # cosine | const | const-cooldown
    warmup_steps: int = 100
    cooldown_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class PrecisionConfig:
    dtype: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + grad scaler, CUDA only)
    device: str = "auto"  # auto | cpu | cuda
    deterministic: bool = False  # torch.use_deterministic_algorithms (CPU runs are deterministic anyway)
    # Large fp32 linear layers on oneDNN's GEMMs (models.onednn): auto = on for CPU fp32 without
    # FSDP or compile (~1.9x ViT-B-32 steps on CPUs MKL is slow on; no effect at width < 256).
    onednn: str = "auto"  # auto | on | off


@dataclass
class DistributedConfig:
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | gloo | nccl
    fsdp: bool = False  # shard with FSDP2 (fully_shard) and save sharded checkpoints
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (OpenCLIP's --use-bn-sync)
    local_loss: bool = True
    gather_with_grad: bool = True


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep_last: int = 3
    resume: str | None = None  # "latest" or a checkpoint folder
    export: bool = True  # save_pretrained export of the final model (open_clip loads it)


@dataclass
class LoggingConfig:
    run_dir: str = "runs/run"
    every_steps: int = 1  # metrics.jsonl cadence
    progress: bool = True
    tensorboard: bool = False
    plots: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    loss: str = "auto"  # auto (siglip if the model has a logit_bias) | clip | siglip
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def source_list(self) -> list[SourceConfig]:
        """`data.sources`, or the single source `data.urls` stands for."""
        if self.data.sources:
            return self.data.sources
        return [SourceConfig(urls=self.data.urls, weight=1.0, name="data")]


# ------------------------------------------------------------------------------------------ conversion


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_paths(cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Every overridable dotted field and its type: {"optim.lr": float, ...}."""
    out: dict[str, Any] = {}
    for name, hint in _hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out.update(field_paths(hint, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = hint
    return out


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Convert `value` (from JSON/YAML or a CLI string) to the annotated type, or raise naming `where`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        if isinstance(value, str) and str in args and not value.lstrip().startswith("["):
            return value  # a brace pattern such as "a/{0,1}.tar" must not be split at its commas
        errors = []
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(hint, type) and isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {value!r}")
        return _build(hint, value, where)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):
            value = _parse_text(value, where, as_list=True)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if isinstance(value, str):
            value = _parse_text(value, where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            fval = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not fval.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(fval)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            fval = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        # No float knob means anything at inf or nan: they only surface later as a NaN model.
        if not math.isfinite(fval):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return fval
    if hint is str:
        if isinstance(value, str | os.PathLike):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


# model.overrides: the create_model keys outside the tower sections, and the shorthands that land in one.
_OVERRIDE_TOP: dict[str, Any] = {"embed_dim": int, "quick_gelu": bool, "init_logit_scale": float,
                                 "init_logit_bias": float | None, "custom_text": bool,
                                 "nonscalar_logit_scale": bool, "cast_dtype": str | None}
_OVERRIDE_SHORTHAND = {"image_size": "vision_cfg", "patch_dropout": "vision_cfg", "context_length": "text_cfg"}
_POSITIVE_SIZES = {"embed_dim", "width", "heads", "head_width", "context_length", "vocab_size", "image_size",
                   "patch_size"}


def _override_value(value: Any, hint: Any, where: str) -> Any:
    """`_convert` plus the tuple and union forms model configs use (`int | tuple[int, int]`)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = typing.get_args(hint)
        return [_override_value(v, items[min(i, len(items) - 1)], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        # A list value is reported against the list form, a scalar against the scalar form.
        args.sort(key=lambda a: (typing.get_origin(a) in (tuple, list)) != isinstance(value, list | tuple))
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        errors = []
        for arg in args:
            try:
                return _override_value(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    return _convert(value, hint, where)


def _check_model_overrides(overrides: dict[str, Any], where: str = "model.overrides") -> dict[str, Any]:
    """Type-check `model.overrides` against the model config's fields, so a bad value is a ConfigError
    naming `model.overrides.<key>` now instead of a bare ValueError from deep inside model building."""
    from clipstack.models.config import TextCfg, VisionCfg

    towers = {"vision_cfg": _hints(VisionCfg), "text_cfg": _hints(TextCfg)}

    def one(key: str, value: Any, hint: Any, at: str) -> Any:
        if value is None:  # create_model skips None overrides
            return None
        out = _override_value(value, hint, at)
        sizes = out if isinstance(out, list) else [out]
        if key in _POSITIVE_SIZES and any(isinstance(v, int) and v < 1 for v in sizes):
            raise ConfigError(f"{at}: must be >= 1, got {value!r}")
        return out

    out: dict[str, Any] = {}
    for key, value in overrides.items():
        at = f"{where}.{key}"
        if key in towers:
            if not isinstance(value, dict):
                raise ConfigError(f"{at}: expected a mapping of {key} fields, got {value!r}")
            # Unknown tower keys pass through: the model config names unsupported OpenCLIP fields itself.
            out[key] = {k: one(k, v, towers[key][k], f"{at}.{k}") if k in towers[key] else v
                        for k, v in value.items()}
        elif key in _OVERRIDE_SHORTHAND:
            out[key] = one(key, value, towers[_OVERRIDE_SHORTHAND[key]][key], at)
        elif key in _OVERRIDE_TOP:
            out[key] = one(key, value, _OVERRIDE_TOP[key], at)
        else:
            known = sorted([*_OVERRIDE_TOP, *_OVERRIDE_SHORTHAND, *towers])
            close = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"{at}: unknown model config key"
                              + (f" (did you mean {where}.{close[0]}?)" if close else f"; known: {', '.join(known)}"))
    return out


def _parse_text(text: str, where: str, as_list: bool = False) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if as_list:
            return [part for part in text.split(",") if part]
        raise ConfigError(f"{where}: expected JSON, got {text!r}") from None


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for key, value in values.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"{where}: unknown field{hint}")
        kwargs[key] = _convert(value, hints[key], where)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = nxt
    node[parts[-1]] = value


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON or YAML file as a dict (YAML only when the extension says so and PyYAML is installed)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exn:
        raise ConfigError(f"{p}: config file is not UTF-8 text (byte {exn.start}: {exn.reason})") from None
    except OSError as exn:
        raise ConfigError(f"{p}: cannot read config file ({exn.strerror or exn})") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{p}: reading YAML needs PyYAML (pip install pyyaml); or write the "
                              "config as JSON") from None

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exn:
            raise ConfigError(f"{p}: not valid YAML ({exn})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exn:
            raise ConfigError(f"{p}: not valid JSON ({exn})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | TrainConfig | None = None) -> TrainConfig:
    """Defaults <- `base` <- file at `path` <- dotted `overrides` ({"optim.lr": "1e-3"}); then validate."""
    tree: dict[str, Any] = {}
    if isinstance(base, TrainConfig):
        tree = base.to_dict()
    elif base:
        tree = json.loads(json.dumps(base))
    if path is not None:
        _merge(tree, read_config_file(path))
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    config = _build(TrainConfig, tree, "")
    validate(config)
    return config


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = value


# ------------------------------------------------------------------------------------------ validation


def _check(ok: bool, where: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}, got {value!r}")


def validate(c: TrainConfig) -> TrainConfig:
    """Raise `ConfigError` naming the first bad field; return the config when every value is usable."""
    _check(c.data.batch_size >= 1, "data.batch_size", "must be >= 1", c.data.batch_size)
    _check(c.data.workers >= 0, "data.workers", "must be >= 0", c.data.workers)
    _check(c.data.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0", c.data.shuffle_buffer)
    _check(c.data.captions_per_image >= 1, "data.captions_per_image", "must be >= 1", c.data.captions_per_image)
    _check(c.data.steps_per_epoch is None or c.data.steps_per_epoch >= 1, "data.steps_per_epoch",
           "must be >= 1 or null", c.data.steps_per_epoch)
    scale = c.data.augment_scale
    _check(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "data.augment_scale",
           "must be [min, max] with 0 < min <= max <= 1", scale)
    ratio = c.data.augment_ratio
    _check(len(ratio) == 2 and 0 < ratio[0] <= ratio[1], "data.augment_ratio",
           "must be [min, max] with 0 < min <= max", ratio)
    if c.data.hard_negatives:
        from clipstack.data.negatives import parse_groups

        parse_groups(c.data.hard_negatives)
    if not c.data.sources:
        _check(bool(c.data.urls), "data.urls", "no training shards given (set data.urls or data.sources)",
               c.data.urls)
    for i, src in enumerate(c.data.sources):
        _check(bool(src.urls), f"data.sources[{i}].urls", "must name shards", src.urls)
        _check(src.weight > 0, f"data.sources[{i}].weight", "must be > 0", src.weight)
    o = c.optim
    _check(o.lr > 0, "optim.lr", "must be > 0", o.lr)
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    _check(0 <= o.beta1 < 1, "optim.beta1", "must be in [0, 1)", o.beta1)
    _check(0 <= o.beta2 < 1, "optim.beta2", "must be in [0, 1)", o.beta2)
    _check(o.eps > 0, "optim.eps", "must be > 0", o.eps)
    _check(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", "must be > 0 or null", o.grad_clip)
    _check(o.accum_freq >= 1, "optim.accum_freq", "must be >= 1", o.accum_freq)
    s = c.schedule
    _check(s.epochs >= 1, "schedule.epochs", "must be >= 1", s.epochs)
    _check(s.max_steps is None or s.max_steps >= 1, "schedule.max_steps", "must be >= 1 or null", s.max_steps)
    _check(s.time_budget_s is None or s.time_budget_s > 0, "schedule.time_budget_s", "must be > 0 or null",
           s.time_budget_s)
    _check(s.kind in ("cosine", "const", "const-cooldown"), "schedule.kind",
           "must be cosine, const or const-cooldown", s.kind)
    _check(s.warmup_steps >= 0, "schedule.warmup_steps", "must be >= 0", s.warmup_steps)
    _check(0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio", "must be in [0, 1]", s.min_lr_ratio)
    p = c.precision
    _check(p.dtype in ("fp32", "bf16", "fp16"), "precision.dtype", "must be fp32, bf16 or fp16", p.dtype)
    _check(p.device in ("auto", "cpu", "cuda"), "precision.device", "must be auto, cpu or cuda", p.device)
    _check(p.onednn in ("auto", "on", "off"), "precision.onednn", "must be auto, on or off", p.onednn)
    _check(c.distributed.backend in ("auto", "gloo", "nccl"), "distributed.backend",
           "must be auto, gloo or nccl", c.distributed.backend)
    k = c.checkpoint
    _check(k.every_steps >= 1, "checkpoint.every_steps", "must be >= 1", k.every_steps)
    _check(k.keep_last >= 1, "checkpoint.keep_last", "must be >= 1", k.keep_last)
    _check(c.logging.every_steps >= 1, "logging.every_steps", "must be >= 1", c.logging.every_steps)
    _check(bool(c.logging.run_dir), "logging.run_dir", "must be a folder path", c.logging.run_dir)
    _check(c.loss in ("auto", "clip", "siglip"), "loss", "must be auto, clip or siglip", c.loss)
    c.model.overrides = _check_model_overrides(c.model.overrides)
    _check(not (c.model.lock_image and c.model.lock_text), "model.lock_text",
           "cannot freeze both towers (nothing would train)", True)
    return c
