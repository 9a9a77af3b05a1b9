"""Sample uids and DataComp-style subset files (a sorted array of 128-bit uids, saved as .npy).

A uid is 32 hex digits: the sample's own `uid` metadata field when it has one (DataComp pools do),
otherwise the md5 of its key. Training applies a subset by looking each sample's uid up in the array,
so a curated subset of a pool needs no resharding.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from clipstack.errors import DataError

UID_DTYPE = np.dtype([("u0", "<u8"), ("u1", "<u8")])  # high, low 64 bits; sorts as the 128-bit value
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def uid_for(key: str, meta: dict | None = None) -> str:
    """The sample's 128-bit uid as 32 lower-case hex digits."""
    uid = str((meta or {}).get("uid", "")).lower()
    if _HEX32.match(uid):
        return uid
    return hashlib.md5(key.encode("utf-8")).hexdigest()


def uid64(uid: str) -> int:
    """The high 64 bits of a uid (seeds balancing draws)."""
    return int(uid[:16], 16)


def uids_to_array(uids: Iterable[str]) -> np.ndarray:
    """Hex uids -> a sorted, de-duplicated structured array (the subset format)."""
    pairs = [(int(u[:16], 16), int(u[16:32], 16)) for u in uids]
    arr = np.array(pairs, dtype=UID_DTYPE)
    return np.unique(arr)  # sorts by (u0, u1)


def write_subset(path: str | os.PathLike, uids: Iterable[str]) -> int:
    """Write the subset file atomically; returns the number of uids."""
    from clipstack.io import atomic_path

    arr = uids_to_array(uids)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    return len(arr)


def load_subset(path: str | os.PathLike) -> np.ndarray:
    """Read a subset file (ours, or DataComp's `u8,u8` arrays); checks that it is sorted."""
    path = Path(path)
    try:
        arr = np.load(path)
    except (OSError, ValueError) as exn:
        raise DataError(f"{path}: not a subset .npy file ({exn})") from None
    if arr.dtype.names is None or len(arr.dtype.names) != 2:
        raise DataError(f"{path}: subset must be a structured array of two uint64 fields, got {arr.dtype}")
    out = np.empty(len(arr), dtype=UID_DTYPE)  # DataComp names its fields f0, f1
    out["u0"], out["u1"] = arr[arr.dtype.names[0]], arr[arr.dtype.names[1]]
    arr = out
    if not is_sorted(arr):
        raise DataError(f"{path}: subset uids are not sorted")
    return arr


def is_sorted(arr: np.ndarray, strict: bool = False) -> bool:
    """True when a uid array is in ascending 128-bit order (strictly: also without repeats)."""
    hi, lo = arr["u0"], arr["u1"]
    up = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & ((lo[1:] > lo[:-1]) if strict else (lo[1:] >= lo[:-1])))
    return bool(np.all(up))


def in_subset(uids: Iterable[str], subset: np.ndarray) -> np.ndarray:
    """Boolean mask: which of `uids` are in `subset` (binary search on the sorted array)."""
    query = uids_to_array_unsorted(uids)
    if len(subset) == 0:
        return np.zeros(len(query), dtype=bool)
    pos = np.searchsorted(subset, query)
    pos = np.minimum(pos, len(subset) - 1)
    return subset[pos] == query


def uids_to_array_unsorted(uids: Iterable[str]) -> np.ndarray:
    return np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], dtype=UID_DTYPE)
