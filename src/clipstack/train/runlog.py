"""What a training run writes for people and orchestrators: config.json, metrics.jsonl, tensorboard.

`metrics.jsonl` has one JSON object per logged step (`{"step", "epoch", "loss", "lr", "logit_scale",
"logit_bias", "grad_norm", "samples_per_s", "data_wait", ...}`) and one per callback result
(`{"step", "callback": name, ...}`). On resume, lines after the resumed step are dropped first, so the
file reads as if the run had never stopped. Every line is strict JSON: a non-finite number (a diverged
loss, an overflowing grad norm) is written as `null`, never as the `NaN`/`Infinity` other parsers reject.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipstack.io import json_safe, write_json

__all__ = ["Callback", "StepContext", "MetricsLog", "write_run_config", "json_safe", "data_report",
           "sum_data_stats", "write_summary"]


@dataclass
class StepContext:
    """What a callback sees: the run so far and the (unwrapped) model, in eval-ready form."""

    step: int
    epoch: int
    total_steps: int
    model: Any
    run_dir: Path
    metrics: dict[str, Any]
    is_main: bool
    final: bool = False


@dataclass
class Callback:
    """`fn(ctx) -> dict | None` every `every_steps` optimizer steps (0 = never mid-run) and at the end.

    A returned dict is written to metrics.jsonl as `{"step", "callback": name, **result}`. With
    `main_only`, only rank 0 calls it (others wait at the next collective), which suits evaluation.
    """

    fn: Callable[[StepContext], dict[str, Any] | None]
    every_steps: int = 0
    at_end: bool = True
    main_only: bool = True
    name: str = ""

    def due(self, step: int, final: bool) -> bool:
        if final:
            return self.at_end
        return self.every_steps > 0 and step % self.every_steps == 0


def as_callbacks(callbacks: Any) -> list[Callback]:
    """Accept Callback objects, `(every_steps, fn)` pairs, or bare callables (end of run only)."""
    out = []
    for i, cb in enumerate(callbacks or []):
        if isinstance(cb, Callback):
            item = cb
        elif isinstance(cb, tuple) and len(cb) == 2:
            item = Callback(fn=cb[1], every_steps=int(cb[0]))
        elif callable(cb):
            item = Callback(fn=cb)
        else:
            raise TypeError(f"callbacks[{i}]: expected a Callback, (every_steps, fn) or a callable")
        if not item.name:
            item.name = getattr(item.fn, "__name__", f"callback{i}")
        out.append(item)
    return out


class MetricsLog:
    """Appends JSON lines to RUN/metrics.jsonl (rank 0 only), mirrored to tensorboard when asked."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            write_bytes_lines(self.path, kept)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional; say so once instead of failing the run
                print("clipstack: tensorboard is not installed; logging to metrics.jsonl only")
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._fh.write(json.dumps(json_safe(record), sort_keys=False, allow_nan=False) + "\n")
        self._fh.flush()
        if self._tb is not None:
            prefix = f"{record['callback']}/" if "callback" in record else "train/"
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step" \
                        and math.isfinite(value):
                    self._tb.add_scalar(prefix + key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self._fh.close()
            if self._tb is not None:
                self._tb.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # a torn last line from a kill: drop it


def write_bytes_lines(path: Path, lines: list[str]) -> None:
    from clipstack.io import atomic_open

    with atomic_open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")


def write_run_config(run_dir: Path, config_dict: dict[str, Any], model_config: dict[str, Any],
                     extra: dict[str, Any]) -> None:
    """RUN/config.json: the resolved train config, the model's open_clip config and versions."""
    import torch

    from clipstack import __version__

    write_json(run_dir / "config.json", {
        "config": config_dict,
        "model_config": model_config,
        "clipstack_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "pid": os.getpid(),
        **extra,
    })


def write_summary(run_dir: Path, fields: dict[str, Any]) -> None:
    """RUN/summary.json: how the run ended (strict JSON: a nan loss is written as null)."""
    write_json(run_dir / "summary.json", json_safe(fields))


def sum_data_stats(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """The data stats of all ranks added up (unreadable shards: each one's first reason)."""
    from clipstack.data.loader import merge_stats

    total: dict[str, Any] = {}
    for stats in per_rank:
        merge_stats(total, stats or {})
        for url, reason in (stats or {}).get("shard_errors", {}).items():
            total.setdefault("shard_errors", {}).setdefault(url, reason)
    return total


# Count keys that label kept samples (or shard reads) rather than drop samples; anything else in the
# loader's counts besides seen/kept is a drop, so a new drop reason still balances.
_NOT_DROPS = ("seen", "kept", "repeated", "hard_negative", "no_hard_negative", "unreadable_shards")


def data_report(totals: dict[str, Any]) -> dict[str, Any]:
    """The run's data counts for people: balanced and with unreadable shards named.

    `seen` = `kept` + drops + `unused_in_buffer` (read into a shuffle buffer, not yet drawn when the run
    stopped). The loader counts an unreadable shard on every read attempt (it is retried each pass);
    here `unreadable_shards` counts distinct shards and `unreadable_shard_reads` the attempts."""
    report = {k: (dict(v) if isinstance(v, dict) else v) for k, v in totals.items()}
    counts = report.setdefault("counts", {})
    errors = report.setdefault("shard_errors", {})
    drops = sum(v for k, v in counts.items() if k not in _NOT_DROPS)
    counts["unused_in_buffer"] = counts.get("seen", 0) - counts.get("kept", 0) - drops
    if counts.get("unreadable_shards") or errors:
        counts["unreadable_shard_reads"] = counts.get("unreadable_shards", 0)
        counts["unreadable_shards"] = len(errors) or counts["unreadable_shard_reads"]
    return report
