"""`clipstack curate --report`: PNG plots, a Markdown summary, and each step scored against ground truth.

Scoring: every step is re-run on its own over all readable samples (so a step is not credited or blamed
for what an earlier step already removed), and compared with `ground_truth.parquet` (written by
`clipstack synth` next to the pool): precision = the share of its drops that carry one of the defects it
targets, recall = the share of each targeted defect it drops. The cascade as run is scored too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clipstack.curate.steps import decide
from clipstack.errors import DataError

# Which ground-truth defect types each step is meant to catch.
TARGETS: dict[str, tuple[str, ...]] = {
    "read": ("corrupt_image", "truncated_image"),
    "text": ("empty_caption", "non_utf8_caption", "short_caption"),
    "basic": ("short_caption", "too_small"),
    "exact": ("exact_duplicate",),
    "phash": ("exact_duplicate", "near_duplicate"),
    "caption": ("exact_duplicate", "near_duplicate"),
    "clip": ("mismatched_caption",),
    "embed": ("exact_duplicate", "near_duplicate"),
    "balance": (),
}


def find_ground_truth(in_shards) -> Path | None:
    """`ground_truth.parquet` beside the pool folder (synth's layout: OUT/pool, OUT/ground_truth.parquet)."""
    path = Path(str(in_shards).split("::")[0])
    folder = path if path.is_dir() else path.parent
    for cand in (folder / "ground_truth.parquet", folder.parent / "ground_truth.parquet"):
        if cand.exists():
            return cand
    return None


def check_ground_truth(gt_path: str | os.PathLike) -> Path:
    """The ground-truth file, checked before curation runs: DataError naming it if it is missing, not
    parquet, or lacks the `key`/`defect` columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(gt_path)
    if not path.is_file():
        raise DataError(f"{path}: ground-truth file not found")
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as exn:
        raise DataError(f"{path}: ground truth is not a readable parquet file ({exn})") from None
    missing = [c for c in ("key", "defect") if c not in names]
    if missing:
        raise DataError(f"{path}: ground truth lacks column(s) {', '.join(missing)} (has {', '.join(names)})")
    return path


def score_steps(result, gt_path: str | os.PathLike) -> list[dict]:
    """One row per step (standalone) plus the cascade: drops, precision, recall per targeted defect."""
    import pyarrow.parquet as pq

    gt = pq.read_table(gt_path, columns=["key", "defect"]).to_pydict()
    defect_of = dict(zip(gt["key"], gt["defect"]))
    feats = result.features
    defects = np.array([defect_of.get(k, "unknown") for k in feats.keys], dtype=object)
    readable = np.array([r is None for r in feats.read_reason], dtype=bool)
    masks = {"read": ~readable}
    for step in result.stats["steps"]:
        if TARGETS.get(step):  # balancing is not a defect detector: scored only within the cascade
            masks[step] = decide(step, feats, readable, result.step_cfg).drop
    cascade = np.zeros(len(feats), dtype=bool)
    cascade[list(result.reason_of)] = True
    rows = []
    for step, drop in masks.items():
        rows.append(_score(step, drop, defects, TARGETS.get(step, ())))
    every = tuple(sorted({d for s in masks for d in TARGETS.get(s, ())}))
    rows.append(_score("all (cascade)", cascade, defects, every))
    return rows


def _score(step: str, drop: np.ndarray, defects: np.ndarray, targets: tuple[str, ...]) -> dict:
    hit = np.isin(defects, list(targets)) if targets else np.zeros(len(defects), dtype=bool)
    n_drop = int(drop.sum())
    recall = {}
    for d in targets:
        total = int((defects == d).sum())
        if total:
            recall[d] = (int((drop & (defects == d)).sum()), total)
    clean_dropped = int((drop & (defects == "clean")).sum())
    return {"step": step, "dropped": n_drop, "targets": list(targets),
            "precision": (int((drop & hit).sum()) / n_drop) if n_drop and targets else None,
            "recall": recall, "clean_dropped": clean_dropped,
            "other_defects": n_drop - int((drop & hit).sum()) - clean_dropped}


def scores_markdown(rows: list[dict]) -> str:
    lines = ["| step | dropped | precision | recall per targeted defect (dropped/total) | other defects | "
             "clean dropped |", "|---|---:|---:|---|---:|---:|"]
    for r in rows:
        prec = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        rec = ", ".join(f"{d} {h}/{t} ({h / t:.2f})" for d, (h, t) in r["recall"].items()) or "-"
        lines.append(f"| {r['step']} | {r['dropped']} | {prec} | {rec} | {r['other_defects']} | "
                     f"{r['clean_dropped']} |")
    return "\n".join(lines)


def write_report(result, out_dir: str | os.PathLike, gt_path: str | os.PathLike | None = None) -> str:
    """Write plots and `summary.md` into `out_dir`; return the Markdown summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipstack.io import atomic_open, atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = result.stats
    lines = ["# Curation report", "", f"in {stats['in']}, kept {stats['kept']}, dropped {stats['dropped']} "
             f"(kept {stats['kept'] / max(1, stats['in']):.1%})", "", "| after | samples | dropped here |",
             "|---|---:|---|"]
    for step, size in stats["sizes_after_step"].items():
        why = ", ".join(f"{r} {c}" for r, c in stats["dropped_by_step"].get(step, {}).items())
        lines.append(f"| {step} | {size} | {why} |")

    def save(fig, name):
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    names, sizes = zip(*stats["sizes_after_step"].items())
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, sizes, color="#4c72b0")
    ax.set_ylabel("samples left")
    ax.set_title("pool size after each step")
    save(fig, "sizes.png")

    bal = result.decisions.get("balance")
    if bal is not None:
        lines += [""] + _balance_section(bal.info, result.entries, save, plt)
    if gt_path:
        rows = score_steps(result, gt_path)
        lines += ["", f"## Steps scored against ground truth ({Path(gt_path).name})", "",
                  "Each step alone on every readable sample, then the cascade as run.", "",
                  scores_markdown(rows)]
    summary = "\n".join(lines) + "\n"
    with atomic_open(out / "summary.md", "w", encoding="utf-8") as fh:
        fh.write(summary)
    return summary


def _balance_section(info: dict, entries: list[str], save, plt) -> list[str]:
    before = info["counts_before"].astype(np.float64)
    after = info["counts_after"].astype(np.float64)
    t = float(info["t"])
    matched = before > 0
    tail = matched & (before < t)
    head = before >= t
    tail_kept = after[tail].sum() / max(1.0, before[tail].sum())
    head_kept = after[head].sum() / max(1.0, before[head].sum())

    order = np.argsort(-before, kind="stable")[: int(matched.sum())]
    fig, ax = plt.subplots(figsize=(7, 4))
    ranks = np.arange(1, len(order) + 1)
    ax.loglog(ranks, before[order], label="before balancing")
    ax.loglog(ranks, np.maximum(after[order], 0.5), label="after balancing", alpha=0.8)
    ax.axhline(t, color="gray", linestyle="--", label=f"t = {t:g}")
    ax.set_xlabel("entry rank")
    ax.set_ylabel("matched texts")
    ax.set_title("matched texts per metadata entry, before and after balancing")
    ax.legend()
    save(fig, "entry_counts.png")

    top = order[:20]
    fig, ax = plt.subplots(figsize=(7, 5))
    y = np.arange(len(top))
    ax.barh(y - 0.2, before[top], height=0.4, label="before")
    ax.barh(y + 0.2, after[top], height=0.4, label="after")
    ax.set_yticks(y, [entries[i] for i in top])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(t, color="gray", linestyle="--")
    ax.legend()
    ax.set_title("top entries")
    save(fig, "top_entries.png")

    lines = ["## Balancing", "", f"t = {t:g}; {int(matched.sum())} of {len(before)} entries matched; "
             f"{int(head.sum())} head entries (count >= t), {int(tail.sum())} tail entries.",
             f"Fraction of tail matches kept: {tail_kept:.3f}; of head matches kept: {head_kept:.3f}.", "",
             "| entry | before | after |", "|---|---:|---:|"]
    lines += [f"| {entries[i]} | {int(before[i])} | {int(after[i])} |" for i in order[:10]]
    lines += ["", "Plots: sizes.png, entry_counts.png, top_entries.png"]
    return lines
