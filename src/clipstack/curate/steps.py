"""Curation steps as decisions over per-sample features: which alive samples each step drops, and why.

The pipeline extracts features for every sample in one streaming pass (`Features`); each step then
looks only at the samples still alive after the steps before it, in the order the user gave, so the
ledger names the first step that dropped a sample. The same functions run with every readable sample
alive to score each step on its own against ground truth.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STEPS = ("text", "basic", "exact", "phash", "caption", "clip", "embed", "balance")
DEDUP_STEPS = ("exact", "phash", "caption", "embed")


class MatchStore:
    """Metadata matches of every position, in order, as CSR chunks: in memory, or spilled to .npy
    files in `spill_dir` so the balance step's two passes (count, then sample) run in bounded memory."""

    def __init__(self, spill_dir: str | os.PathLike | None = None, chunk: int = 65536):
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.chunk = chunk
        self._chunks: list[tuple[int, int, object]] = []  # (start, count, arrays or file stem)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self.total = 0

    def add(self, offsets: np.ndarray, ids: np.ndarray) -> None:
        self._pending.append((offsets, ids))
        self._pending_n += len(offsets) - 1
        if self._pending_n >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        offsets, ids, base = [np.zeros(1, dtype=np.int64)], [], 0
        for off, idx in self._pending:
            offsets.append(off[1:] + base)
            ids.append(idx)
            base += len(idx)
        off, idx = np.concatenate(offsets), np.concatenate(ids).astype(np.int64)
        store: object = (off, idx)
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            stem = self.spill_dir / f"matches_{len(self._chunks):06d}"
            np.save(f"{stem}.offsets.npy", off)
            np.save(f"{stem}.ids.npy", idx)
            store = stem
        self._chunks.append((self.total, self._pending_n, store))
        self.total += self._pending_n
        self._pending, self._pending_n = [], 0

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first position, offsets, ids) per chunk, in order."""
        self.flush()
        for start, _, store in self._chunks:
            if isinstance(store, Path):
                yield start, np.load(f"{store}.offsets.npy"), np.load(f"{store}.ids.npy")
            else:
                yield (start, *store)


@dataclass
class Features:
    """Per-sample features, index = position in the pool (reading order)."""

    keys: list[str] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    shard: list[int] = field(default_factory=list)
    read_reason: list[str | None] = field(default_factory=list)
    read_detail: list[str] = field(default_factory=list)  # why a read failed, for the ledger ("" if read)
    non_utf8: list[bool] = field(default_factory=list)
    text_reason: list[str | None] = field(default_factory=list)
    basic_reason: list[str | None] = field(default_factory=list)
    sha: list[str] = field(default_factory=list)
    phash: list[int] = field(default_factory=list)
    caption_key: list[str] = field(default_factory=list)
    clip_score: list[float] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)  # batches, rows aligned with positions
    matches: MatchStore = field(default_factory=MatchStore)

    def __len__(self) -> int:
        return len(self.keys)

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
    """Two streaming passes over the stored matches: count over the alive samples, then sample."""
    from clipstack.curate.balance import balance_mask, entry_probabilities
    from clipstack.curate.uids import uid64

    n_entries = max(1, cfg.num_entries)
    counts = np.zeros(n_entries, dtype=np.uint64)
    for start, off, ids in feats.matches:
        text = np.repeat(np.arange(len(off) - 1), np.diff(off))
        counts += np.bincount(ids[alive[start + text]], minlength=n_entries).astype(np.uint64)
    probs = entry_probabilities(counts, cfg.balance_t)
    drop = np.zeros(len(feats), dtype=bool)
    reasons: dict[int, str] = {}
    after = np.zeros(n_entries, dtype=np.uint64)
    for start, off, ids in feats.matches:
        n = len(off) - 1
        uid_hi = np.array([uid64(u) for u in feats.uids[start:start + n]], dtype=np.uint64)
        live = alive[start:start + n]
        keep = balance_mask(off, ids, probs, uid_hi, cfg.seed) & live
        text = np.repeat(np.arange(n), np.diff(off))
        after += np.bincount(ids[keep[text]], minlength=n_entries).astype(np.uint64)
        has_match = np.diff(off) > 0
        for j in np.flatnonzero(live & ~keep):
            drop[start + j] = True
            reasons[int(start + j)] = "balanced_out" if has_match[j] else "no_match"
    return drop, reasons, {"counts_before": counts, "counts_after": after, "t": cfg.balance_t}
