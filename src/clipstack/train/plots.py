"""PNG plots of a run's metrics.jsonl: loss, learning rate and temperature (and SigLIP's bias).

Written at the end of `clipstack train` and on demand by `clipstack plot RUN_DIR`, so a run folder can
be judged at a glance without tensorboard. Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from clipstack.errors import ClipstackError

__all__ = ["read_metrics", "plot_run"]


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The per-step records of RUN/metrics.jsonl (callback records and torn lines left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ClipstackError(f"{path}: no metrics.jsonl (is {run_dir} a clipstack run folder?)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict) and "callback" not in rec and "loss" in rec:
            rows.append(rec)
    return rows


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write loss.png, lr.png and temperature.png (1 / logit_scale, plus logit_bias if any); return paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipstack.io import atomic_path

    rows = read_metrics(run_dir)
    if not rows:
        raise ClipstackError(f"{Path(run_dir) / 'metrics.jsonl'}: no step records to plot")
    out = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows]
    panels = [
        ("loss", "training loss", [("loss", [r["loss"] for r in rows])]),
        ("lr", "learning rate", [("lr", [r["lr"] for r in rows])]),
        ("temperature", "temperature (1 / logit_scale)",
         [("temperature", [1.0 / r["logit_scale"] if r.get("logit_scale") else float("nan") for r in rows])]),
    ]
    if any(r.get("logit_bias") is not None for r in rows):
        panels.append(("logit_bias", "logit bias", [("logit_bias", [r.get("logit_bias") for r in rows])]))
    written = []
    for name, title, series in panels:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for label, values in series:
            ax.plot(steps, values, label=label, linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        values = [v for v in series[0][1] if v is not None]
        if name == "loss" and values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")  # only when the loss spans orders of magnitude
        fig.tight_layout()
        target = out / f"{name}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(target)
    return written
