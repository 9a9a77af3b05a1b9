"""Choose a FAISS index for a collection from its size and a memory budget, the way autofaiss does.

Small collections get exact search (Flat): nothing to train and nothing to tune. Mid-sized ones get
HNSW when its graph and raw vectors fit the budget. Large ones get IVF, with the most precise codes that
fit: raw floats, then 8-bit scalar quantization (SQ8), then product quantization (PQ) with as many
bytes per vector as the budget allows. The search-time knob (nprobe or efSearch) is tuned afterwards on
held-out queries, so the plan only fixes the structure.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from clipstack.errors import ConfigError

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
HNSW_M = 32


@dataclass
class IndexPlan:
    """What to build: a FAISS factory string plus the reasoning, kept in index_info.json."""

    key: str
    kind: str  # "flat" | "hnsw" | "ivf"
    nlist: int | None
    code_bytes_per_vector: float
    estimated_bytes: int
    tune_param: str | None  # "nprobe" | "efSearch" | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def parse_memory(text: str | int) -> int:
    """'4G', '512M', '1.5G' or a byte count -> bytes. Raises ConfigError naming the value."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"--max-memory: cannot parse {text!r}; use a size like 4G, 512M or 2000000")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value <= 0:
        raise ConfigError(f"--max-memory: {text!r} must be positive")
    return int(value)


def default_nlist(n: int) -> int:
    """sqrt(n) lists rounded to a power of two, with >= 39 training points per list.

    autofaiss goes up to 16*sqrt(n); on a few CPU cores k-means and assignment cost grows with nlist, and
    sqrt(n) already scans ~1/sqrt(n) of the data per probe, so we stay at the low end.
    """
    nlist = 2 ** max(4, round(math.log2(max(1.0, math.sqrt(n)))))
    while nlist > 16 and nlist * 39 > n:
        nlist //= 2
    return nlist


def choose_index(n: int, dim: int, max_memory: int, *, flat_threshold: int = 20_000,
                 hnsw_threshold: int = 50_000) -> IndexPlan:
    """Plan an inner-product index for `n` vectors of `dim` floats within `max_memory` bytes."""
    if n <= 0 or dim <= 0:
        raise ConfigError(f"cannot index {n} vectors of dimension {dim}")
    raw = 4 * dim
    if n <= flat_threshold and n * raw <= max_memory:
        return IndexPlan("Flat", "flat", None, raw, n * raw, None,
                         f"{n} vectors <= flat threshold {flat_threshold}: exact search is cheap")
    hnsw_bytes = n * (raw + 2 * HNSW_M * 4 * 1.1)
    if n <= hnsw_threshold and hnsw_bytes <= max_memory:
        return IndexPlan(f"HNSW{HNSW_M},Flat", "hnsw", None, raw + 2 * HNSW_M * 4, int(hnsw_bytes),
                         "efSearch", f"{n} vectors <= HNSW threshold {hnsw_threshold} and the graph fits")
    nlist = default_nlist(n)
    overhead = nlist * raw + n * 8  # centroids + ids (the direct map for reconstruct costs the same again)
    budget = max_memory - overhead - n * 8
    for code, per_vec, why in ((f"IVF{nlist},Flat", raw, "raw float vectors fit"),
                               (f"IVF{nlist},SQ8", dim, "8-bit scalar codes fit (raw floats do not)")):
        if n * per_vec <= budget:
            return IndexPlan(code, "ivf", nlist, per_vec, n * per_vec + overhead + n * 8, "nprobe",
                             f"{n} vectors: inverted lists over {nlist} centroids; {why}")
    # Product quantization: the largest number of 8-bit sub-quantizers that divides dim and fits.
    # "np": no polysemous training, which costs minutes and only helps Hamming-filtered search.
    for m in sorted((m for m in range(4, dim + 1) if dim % m == 0 and m <= 256), reverse=True):
        if n * m <= budget:
            return IndexPlan(f"IVF{nlist},PQ{m}x8np", "ivf", nlist, m, n * m + overhead + n * 8, "nprobe",
                             f"{n} vectors: only product-quantized codes ({m} bytes each) fit the budget")
    raise ConfigError(f"--max-memory {max_memory} bytes is too small for {n} vectors of dimension {dim} "
                      f"(needs at least {n * 4 + overhead + n * 8} bytes with 4-byte PQ codes)")
