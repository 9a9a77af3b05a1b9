"""Curation steps as decisions over per-sample features: which alive samples each step drops, and why.

The pipeline extracts features for every sample in one streaming pass (`Features`); each step then
looks only at the samples still alive after the steps before it, in the order the user gave, so the
ledger names the first step that dropped a sample. The same functions run with every readable sample
alive to score each step on its own against ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STEPS = ("text", "basic", "exact", "phash", "caption", "clip", "embed", "balance")
DEDUP_STEPS = ("exact", "phash", "caption", "embed")


@dataclass
class Features:
    """Per-sample features, index = position in the pool (reading order)."""

    keys: list[str] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    shard: list[int] = field(default_factory=list)
    read_reason: list[str | None] = field(default_factory=list)
    non_utf8: list[bool] = field(default_factory=list)
    text_reason: list[str | None] = field(default_factory=list)
    basic_reason: list[str | None] = field(default_factory=list)
    sha: list[str] = field(default_factory=list)
    phash: list[int] = field(default_factory=list)
    caption_key: list[str] = field(default_factory=list)
    clip_score: list[float] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)  # batches, rows aligned with positions
    match_offsets: list[np.ndarray] = field(default_factory=list)  # per batch, CSR
    match_ids: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def matches(self) -> tuple[np.ndarray, np.ndarray]:
        """All batches' CSR matches joined into one (offsets over all positions, ids)."""
        offsets, ids, base = [np.zeros(1, dtype=np.int64)], [], 0
        for off, idx in zip(self.match_offsets, self.match_ids):
            offsets.append(off[1:] + base)
            ids.append(idx)
            base += len(idx)
        return np.concatenate(offsets), (np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64))


@dataclass
class StepConfig:
    phash_threshold: int = 4
    phash_size: int = 8
    embed_threshold: float = 0.95
    clip_threshold: float | None = None
    clip_fraction: float | None = None
    balance_t: float = 20000.0
    seed: int = 0
    num_entries: int = 0


@dataclass
class Decision:
    """What one step dropped: a mask over all positions, a reason per dropped one, optional details."""

    drop: np.ndarray
    reasons: dict[int, str]
    details: dict[int, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def decide(step: str, feats: Features, alive: np.ndarray, cfg: StepConfig) -> Decision:
    """Run one step over the alive samples."""
    n = len(feats)
    drop = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}
    details: dict[int, str] = {}
    info: dict = {}
    idx = np.flatnonzero(alive)
    if step in ("text", "basic"):
        column = feats.text_reason if step == "text" else feats.basic_reason
        for i in idx:
            reason = "non_utf8" if step == "text" and feats.non_utf8[i] else column[i]
            if reason:
                drop[i], reasons[i] = True, reason
    elif step in ("exact", "caption"):
        from clipstack.curate.dedup import ExactIndex

        index = ExactIndex()
        column = feats.sha if step == "exact" else feats.caption_key
        for i in idx:
            if step == "caption" and not column[i]:
                continue  # an empty caption is the text filter's business, not a duplicate
            first = index.check(column[i], feats.keys[i])
            if first is not None:
                drop[i], reasons[i], details[i] = True, "duplicate", f"duplicate_of={first}"
    elif step == "phash":
        from clipstack.curate.dedup import PhashIndex

        index = PhashIndex(cfg.phash_threshold, cfg.phash_size ** 2)
        for i in idx:
            hit = index.check(feats.phash[i], feats.keys[i])
            if hit is not None:
                drop[i], reasons[i] = True, "near_duplicate"
                details[i] = f"duplicate_of={hit[0]} hamming={hit[1]}"
        info["comparisons"] = index.comparisons
        info["all_pairs"] = len(idx) * (len(idx) - 1) // 2
    elif step == "clip":
        from clipstack.curate.filters import clip_score_keep

        scores = np.asarray(feats.clip_score, dtype=np.float64)
        keep = clip_score_keep(scores[idx], cfg.clip_threshold, cfg.clip_fraction)
        for j, i in enumerate(idx):
            if not keep[j]:
                drop[i], reasons[i] = True, "low_clip_score"
                details[i] = f"score={scores[i]:.4f}"
        if len(idx):
            info["score_cut"] = float(np.min(scores[idx][keep])) if keep.any() else None
    elif step == "embed":
        from clipstack.curate.dedup import embedding_duplicates

        emb = np.concatenate(feats.embeddings) if feats.embeddings else np.zeros((n, 1), np.float32)
        dup_of = embedding_duplicates(emb[idx], cfg.embed_threshold)
        for j, i in enumerate(idx):
            if dup_of[j] >= 0:
                drop[i], reasons[i] = True, "embedding_duplicate"
                details[i] = f"duplicate_of={feats.keys[idx[dup_of[j]]]}"
    elif step == "balance":
        drop, reasons, info = _balance(feats, alive, cfg)
    else:
        raise ValueError(f"unknown step {step!r}")
    return Decision(drop, reasons, details, info)


def _balance(feats: Features, alive: np.ndarray, cfg: StepConfig):
    from clipstack.curate.balance import balance_mask, entry_probabilities
    from clipstack.curate.uids import uid64

    offsets, ids = feats.matches()
    n = len(feats)
    text = np.repeat(np.arange(n), np.diff(offsets))
    live_pairs = alive[text]
    counts = np.bincount(ids[live_pairs], minlength=cfg.num_entries).astype(np.uint64)
    probs = entry_probabilities(counts, cfg.balance_t)
    uid_hi = np.array([uid64(u) for u in feats.uids], dtype=np.uint64)
    keep = balance_mask(offsets, ids, probs, uid_hi, cfg.seed) & alive
    drop = alive & ~keep
    has_match = np.diff(offsets) > 0
    reasons = {int(i): ("balanced_out" if has_match[i] else "no_match") for i in np.flatnonzero(drop)}
    kept_pairs = keep[text]
    after = np.bincount(ids[kept_pairs], minlength=cfg.num_entries).astype(np.uint64)
    return drop, reasons, {"counts_before": counts, "counts_after": after, "t": cfg.balance_t}
