"""PNG plots of a run's metrics.jsonl: loss, learning rate and temperature (and SigLIP's bias).

Written at the end of `clipstack train` and on demand by `clipstack plot RUN_DIR`, so a run folder can
be judged at a glance without tensorboard. Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from clipstack.errors import ClipstackError, DataError

__all__ = ["read_metrics", "plot_run"]


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The per-step records of RUN/metrics.jsonl: callback records left out, and lines that are not a step
    record (torn by a kill, not JSON, not UTF-8, no numeric step) skipped and counted in one warning."""
    path = Path(run_dir) / "metrics.jsonl"
    rows, skipped = _read_step_records(path, run_dir)
    if skipped:
        print(f"clipstack: warning: {path}: skipped {_skipped(skipped)}", file=sys.stderr)
    return rows


def _skipped(n: int) -> str:
    return f"{n} line{'s' if n != 1 else ''} that are not step records (not JSON, not UTF-8, or no numeric step)"


def _read_step_records(path: Path, run_dir: str | os.PathLike) -> tuple[list[dict], int]:
    """(step records, number of unusable lines); callback records and blank lines are not counted."""
    if not path.is_file():
        raise ClipstackError(f"{path}: no metrics.jsonl (is {run_dir} a clipstack run folder?)")
    try:
        data = path.read_bytes()
    except OSError as exn:
        raise DataError(f"{path}: cannot read ({exn.strerror or exn})") from None
    rows, skipped = [], 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            skipped += 1  # a line cut short by a kill, or garbage
            continue
        if isinstance(rec, dict) and "callback" in rec:
            continue  # a callback's result (eval metrics), not a training step
        if isinstance(rec, dict) and not math.isnan(_number(rec.get("step"))):
            rows.append(rec)
        else:
            skipped += 1
    return rows, skipped


def _number(value: Any) -> float:
    """`value` as a float to plot; NaN (a gap in the curve) for a missing, null or non-numeric value."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write loss.png, lr.png and temperature.png (1 / logit_scale, plus logit_bias if any); return paths.

    A metric missing from a record, null (how a non-finite value is written) or not a number is a gap in
    its curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipstack.io import atomic_path, ensure_folder

    path = Path(run_dir) / "metrics.jsonl"
    rows, skipped = _read_step_records(path, run_dir)
    if not rows:  # one line for the whole story, e.g. a metrics.jsonl that is all garbage
        raise DataError(f"{path}: no step records to plot" + (f"; skipped {_skipped(skipped)}" if skipped else ""))
    if skipped:
        print(f"clipstack: warning: {path}: skipped {_skipped(skipped)}", file=sys.stderr)
    out = ensure_folder(Path(out_dir) if out_dir else Path(run_dir) / "plots", "the plots folder")
    steps = [_number(r["step"]) for r in rows]
    scale = [_number(r.get("logit_scale")) for r in rows]
    panels = [
        ("loss", "training loss", [("loss", [_number(r.get("loss")) for r in rows])]),
        ("lr", "learning rate", [("lr", [_number(r.get("lr")) for r in rows])]),
        ("temperature", "temperature (1 / logit_scale)",
         [("temperature", [1.0 / s if s > 0 else math.nan for s in scale])]),
    ]
    if any(r.get("logit_bias") is not None for r in rows):
        panels.append(("logit_bias", "logit bias", [("logit_bias", [_number(r.get("logit_bias")) for r in rows])]))
    written = []
    for name, title, series in panels:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for label, values in series:
            ax.plot(steps, values, label=label, linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        values = [v for v in series[0][1] if not math.isnan(v)]
        if name == "loss" and values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")  # only when the loss spans orders of magnitude
        fig.tight_layout()
        target = out / f"{name}.png"
        try:
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format="png")
        finally:
            plt.close(fig)  # also when the write fails: pyplot keeps every open figure alive
        written.append(target)
    return written
