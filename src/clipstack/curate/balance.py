"""MetaCLIP balancing: cap each metadata entry's expected contribution at t, by independent draws.

Counts below t are raised to t, so entry e keeps a matching text with probability p_e = min(1, t/count_e);
a text is kept when any of its matched entries' draws passes, so P(keep) = 1 - prod(1 - p_e); texts with
no match are dropped. The draws are a counter-based hash of (seed, sample uid, entry id) rather than a
stateful RNG, so a decision does not depend on batch sizes, shard order or how many workers ran: the
same seed and pool give the same subset, always. Memory is O(entries) for the counts plus one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, vectorized: a well-mixed 64-bit hash of each uint64."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniform_draws(seed: int, uid64: np.ndarray, entry_ids: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) floats, one per (uid, entry) pair, determined by the seed and the pair alone."""
    with np.errstate(over="ignore"):
        x = _splitmix64(np.asarray(uid64, dtype=np.uint64) ^ _splitmix64(np.full(1, seed, dtype=np.uint64)))
        x = _splitmix64(x ^ (np.asarray(entry_ids, dtype=np.uint64) * _GOLDEN))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """p_e = t / max(count_e, t): 1 for tail entries, t/count for head entries."""
    counts = np.asarray(counts, dtype=np.float64)
    return t / np.maximum(counts, float(t))


def balance_mask(offsets: np.ndarray, ids: np.ndarray, probs: np.ndarray, uid64: np.ndarray,
                 seed: int = 0) -> np.ndarray:
    """Keep mask for one batch in CSR form (see `Matcher.match`); `uid64` has one uint64 per text."""
    n = len(offsets) - 1
    if len(ids) == 0:
        return np.zeros(n, dtype=bool)
    text = np.repeat(np.arange(n), np.diff(offsets))
    passed = uniform_draws(seed, np.asarray(uid64, dtype=np.uint64)[text], ids) < probs[ids]
    return np.bincount(text[passed], minlength=n) > 0


def keep_probability(offsets: np.ndarray, ids: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """P(keep) per text, 1 - prod(1 - p_e) (the expectation `balance_mask` samples from)."""
    n = len(offsets) - 1
    text = np.repeat(np.arange(n), np.diff(offsets))
    log_miss = np.log1p(-np.minimum(probs[ids], 1 - 1e-16)) if len(ids) else np.zeros(0)
    total = np.bincount(text, weights=log_miss, minlength=n)
    prob = -np.expm1(total)
    prob[np.diff(offsets) == 0] = 0.0
    prob[np.isin(np.arange(n), text[probs[ids] >= 1.0])] = 1.0
    return prob


def balance_stream(matcher, batches: Iterable[tuple[Sequence[str], np.ndarray]], t: float,
                   seed: int = 0, counts: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Balance a re-iterable stream of (texts, uid64) batches in two passes: count, then sample.

    `batches` is iterated twice unless `counts` (from an earlier pass) is given. Yields one keep mask
    per batch, in order.
    """
    if counts is None:
        counts = matcher.count(texts for texts, _ in batches)
    probs = entry_probabilities(counts, t)
    for texts, uid64 in batches:
        offsets, ids = matcher.match(texts)
        yield balance_mask(offsets, ids, probs, uid64, seed)
