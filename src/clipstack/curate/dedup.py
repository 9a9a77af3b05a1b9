"""Deduplication: exact image bytes, perceptual-hash near duplicates, embedding near duplicates, captions.

Every detector is "keep the first": samples are offered in pool order and a sample is a duplicate when
an earlier *kept* sample is close enough, so the ledger can name what it duplicates. Near-duplicate
perceptual hashes are found with banded buckets (pigeonhole: two hashes within Hamming distance k
agree exactly on at least one of k+1 disjoint bands), so only bucket mates are compared, never all pairs.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def phash_int(image, hash_size: int = 8) -> int:
    """DCT perceptual hash (imagehash.phash) of a PIL image as an int of hash_size**2 bits."""
    import imagehash

    bits = imagehash.phash(image, hash_size=hash_size).hash.flatten()
    return int.from_bytes(np.packbits(bits.astype(np.uint8)).tobytes(), "big")


_CAPTION_STRIP = re.compile(r"[\W_]+", re.UNICODE)


def caption_key(caption: str) -> str:
    """Normalized caption for caption dedup: NFKC, case-folded, punctuation and spacing removed."""
    text = unicodedata.normalize("NFKC", caption).casefold()
    return " ".join(_CAPTION_STRIP.sub(" ", text).split())


class ExactIndex:
    """First key seen for each exact value (image digest or normalized caption)."""

    def __init__(self):
        self._first: dict[str, str] = {}

    def check(self, value: str, key: str) -> str | None:
        """The key of an earlier sample with the same value, else None (and remember this one)."""
        first = self._first.get(value)
        if first is None:
            self._first[value] = key
        return first


class PhashIndex:
    """Near-duplicate search on `bits`-bit hashes with Hamming distance <= threshold, via banded buckets.

    Bands are bits/(threshold+1) wide, so a small threshold relative to the hash size keeps buckets
    small; a threshold near bits/8 or more makes bands so narrow that buckets approach all pairs."""

    def __init__(self, threshold: int = 4, bits: int = 64):
        if not 0 <= threshold < bits // 2:
            raise ValueError(f"phash threshold must be in [0, {bits // 2}), got {threshold}")
        self.threshold = threshold
        bands = threshold + 1
        edges = np.linspace(0, bits, bands + 1).round().astype(int)
        self._bands = [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]
        self._buckets: list[dict[int, list[int]]] = [{} for _ in self._bands]
        self._hashes: list[int] = []
        self._keys: list[str] = []
        self.comparisons = 0

    def _band_values(self, h: int) -> list[int]:
        return [(h >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in self._bands]

    def check(self, h: int, key: str) -> tuple[str, int] | None:
        """(key, distance) of the nearest earlier kept hash within the threshold, else None (and keep)."""
        values = self._band_values(h)
        best: tuple[int, int] | None = None
        seen: set[int] = set()
        for bucket, value in zip(self._buckets, values):
            for idx in bucket.get(value, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                self.comparisons += 1
                dist = (self._hashes[idx] ^ h).bit_count()
                if dist <= self.threshold and (best is None or dist < best[1]):
                    best = (idx, dist)
        if best is not None:
            return self._keys[best[0]], best[1]
        idx = len(self._hashes)
        self._hashes.append(h)
        self._keys.append(key)
        for bucket, value in zip(self._buckets, values):
            bucket.setdefault(value, []).append(idx)
        return None


def embedding_duplicates(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """For L2-normalized rows in pool order: index of the earlier kept row with inner product >=
    `threshold` (the most similar one), or -1. FAISS range search finds the neighbours."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(x)
    dup_of = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return dup_of
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, dist, labels = index.range_search(x, float(threshold))
    for i in range(n):
        nbrs, sims = labels[lims[i]:lims[i + 1]], dist[lims[i]:lims[i + 1]]
        earlier = (nbrs < i) & (dup_of[np.clip(nbrs, 0, n - 1)] < 0)
        if earlier.any():
            dup_of[i] = int(nbrs[earlier][np.argmax(sims[earlier])])
    return dup_of
