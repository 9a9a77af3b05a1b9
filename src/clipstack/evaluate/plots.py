"""Pictures beside a result JSON: recall@K curves (both directions), a confusion matrix, and a grid of
example retrievals (query caption, its top images, the correct one framed in green)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipstack.evaluate import metrics as M
from clipstack.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def recall_curves(t2i_ranks: torch.Tensor, i2t_ranks: torch.Tensor, path: Path, max_k: int = 50,
                  title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for ranks, label in ((t2i_ranks, "text → image (image retrieval)"), (i2t_ranks, "image → text (text retrieval)")):
        k = min(max_k, int(ranks.max()))
        ax.plot(range(1, k + 1), M.recall_curve(ranks, k), marker="." if k <= 20 else None, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or "recall@K")
    return _save(fig, path)


def confusion_matrix(confusion: torch.Tensor, classnames: list[str], path: Path, title: str = "") -> Path:
    plt = _plt()
    n = len(classnames)
    size = min(12, 3 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), classnames, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classnames, fontsize=8)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion (row-normalized)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def retrieval_examples(res, emb, dataset, split: str, path: Path, n_queries: int = 4, top: int = 5) -> Path:
    """One row per query caption: the caption, then its top images; the correct image framed in green."""
    plt = _plt()
    n_queries = min(n_queries, len(res.texts_image_index))
    # Spread the queries over the set rather than taking the first captions of the first image.
    step = max(1, len(res.texts_image_index) // n_queries)
    queries = list(range(0, len(res.texts_image_index), step))[:n_queries]
    top = min(top, res.scores.shape[1])
    tops = {q: torch.sort(res.scores[q], descending=True, stable=True).indices[:top].tolist() for q in queries}
    wanted = {emb.keys[i] for q in queries for i in tops[q]}
    images = {}
    for item in dataset.split(split):
        if item.key in wanted:
            images[item.key] = item.load_image()
            if len(images) == len(wanted):
                break
    captions = [c for caps in emb.captions for c in caps]
    fig, axes = plt.subplots(n_queries, top + 1, figsize=(2.0 * (top + 1), 2.1 * n_queries), squeeze=False)
    for r, q in enumerate(queries):
        axes[r][0].axis("off")
        axes[r][0].text(0, 0.5, _wrap(captions[q]), fontsize=8, va="center", wrap=True)
        for c, img_idx in enumerate(tops[q]):
            ax = axes[r][c + 1]
            ax.imshow(images[emb.keys[img_idx]])
            ax.set_xticks([])
            ax.set_yticks([])
            hit = img_idx == res.texts_image_index[q]
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if hit else "lightgray")
                spine.set_linewidth(4 if hit else 1)
            ax.set_title(f"#{c + 1} {float(res.scores[q, img_idx]):.2f}" + (" ✓" if hit else ""), fontsize=8)
    fig.suptitle("text → image: top retrievals (green = correct image)", fontsize=9)
    return _save(fig, path)


def _wrap(text: str, width: int = 24) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:6])


def write_task_plots(task: str, prefix: Path, extras: dict[str, Any], dataset) -> list[Path]:
    """PNGs for a finished task, named `<prefix>_<kind>.png`."""
    prefix = Path(prefix)
    out = []
    if extras.get("confusion") is not None:
        out.append(confusion_matrix(extras["confusion"], extras["classnames"],
                                    prefix.with_name(prefix.name + "_confusion.png"), title=f"{dataset.name}: {task}"))
    if "retrieval" in extras:
        res = extras["retrieval"]
        out.append(recall_curves(res.t2i_ranks, res.i2t_ranks, prefix.with_name(prefix.name + "_recall_at_k.png"),
                                 title=f"{dataset.name}: recall@K"))
        out.append(retrieval_examples(res, extras["emb"], dataset, extras["split"],
                                      prefix.with_name(prefix.name + "_examples.png")))
    return out
