"""File names of an embedding folder (clip-retrieval's layout) and of an index folder.

Embedding folder, as clip-retrieval's inference writes it, one part per input shard:
`img_emb/img_emb_{i}.npy`, `text_emb/text_emb_{i}.npy`, `metadata/metadata_{i}.parquet`; clipstack adds
`thumbs/thumbs_{i}.parquet` (small JPEGs for the web page) and `embed_info.json` (model, dimension).
A part's metadata file is written last; a part is complete when its metadata and embedding files all
exist and load with the same row count (`check_parts`, `part_rows`).

Index folder: `image.index`, `text.index` (FAISS), `metadata.arrow`, `thumbs.arrow`, `index_info.json`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clipstack.errors import DataError

MODALITY_DIRS = {"image": ("img_emb", "img_emb"), "text": ("text_emb", "text_emb")}
INDEX_FILES = {"image": "image.index", "text": "text.index"}
METADATA_FILE = "metadata.arrow"
THUMBS_FILE = "thumbs.arrow"
INFO_FILE = "index_info.json"
EMBED_INFO_FILE = "embed_info.json"


def emb_path(root: str | os.PathLike, modality: str, part: int) -> Path:
    folder, stem = MODALITY_DIRS[modality]
    return Path(root) / folder / f"{stem}_{part}.npy"


def metadata_path(root: str | os.PathLike, part: int) -> Path:
    return Path(root) / "metadata" / f"metadata_{part}.parquet"


def thumbs_path(root: str | os.PathLike, part: int) -> Path:
    return Path(root) / "thumbs" / f"thumbs_{part}.parquet"


def list_parts(root: str | os.PathLike) -> list[int]:
    """Part numbers with a finished metadata file, in numeric order (10 after 9)."""
    folder = Path(root) / "metadata"
    if not folder.is_dir():
        raise DataError(f"{root}: no metadata/ folder; is this an embedding folder from `clipstack embed`?")
    parts = []
    for path in folder.iterdir():
        match = re.fullmatch(r"metadata_(\d+)\.parquet", path.name)
        if match:
            parts.append(int(match.group(1)))
    if not parts:
        raise DataError(f"{folder}: no metadata_*.parquet parts")
    return sorted(parts)


def modality_parts(root: str | os.PathLike, modality: str) -> list[int]:
    """Part numbers that have an embedding file of `modality`, in numeric order."""
    folder, stem = MODALITY_DIRS[modality]
    path = Path(root) / folder
    if not path.is_dir():
        return []
    return sorted(int(m.group(1)) for p in path.iterdir() if (m := re.fullmatch(rf"{stem}_(\d+)\.npy", p.name)))


def check_parts(root: str | os.PathLike, expected: int | None = None) -> list[int]:
    """Metadata parts, after checking every embedding part has its metadata part and vice versa.

    `expected`: the number of input shards (from embed_info.json), when known; parts below it that are
    missing entirely are reported too. Indexing an incomplete folder would silently drop rows.
    """
    parts = list_parts(root)
    by_modality = {m: set(modality_parts(root, m)) for m in MODALITY_DIRS}
    present = {m: found for m, found in by_modality.items() if found}
    every = set(parts).union(*present.values()) | set(range(expected or 0))
    problems = []
    for part in sorted(every):
        if part not in parts:
            have = [emb_path(root, m, part).name for m in present if part in present[m]]
            why = f"beside {', '.join(have)}" if have else f"of {expected} embedded shards"
            problems.append(f"{metadata_path(root, part)} is missing ({why})")
        for modality, found in present.items():
            if part not in found:
                problems.append(f"{emb_path(root, modality, part)} is missing (beside {metadata_path(root, part).name})")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}: every part needs its metadata and embedding files; rerun "
                        f"`clipstack embed` into {root} to finish or redo the incomplete parts")
    return parts


def load_npy(path: str | os.PathLike, mmap: bool = True):
    """An embedding array (memory-mapped by default); DataError naming the file if it cannot be read."""
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (OSError, ValueError, EOFError) as exn:  # truncated, not .npy, pickled objects
        raise DataError(f"{path}: not a readable .npy array ({exn})") from None
    if not hasattr(arr, "ndim"):  # an .npz archive
        raise DataError(f"{path}: not a .npy array")
    return arr


def read_parquet(path: str | os.PathLike, what: str, columns: list[str] | None = None):
    """A parquet table; DataError naming the file and `what` it is if it is missing or unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} is missing") from None
    except (OSError, pa.ArrowException, ValueError, KeyError) as exn:
        raise DataError(f"{path}: {what} is not a readable parquet file ({exn})") from None


def part_rows(root: str | os.PathLike, part: int, thumbnails: bool) -> int | None:
    """Row count of a finished part, or None when any of its files is missing, unreadable or of another
    length (so `clipstack embed` redoes it). Reads headers and footers only."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(metadata_path(root, part)).num_rows
        for modality in MODALITY_DIRS:
            arr = load_npy(emb_path(root, modality, part))
            if arr.ndim != 2 or arr.shape[0] != rows:
                return None
        if thumbnails and pq.read_metadata(thumbs_path(root, part)).num_rows != rows:
            return None
    except Exception:  # noqa: BLE001 - a damaged part is redone, whatever numpy or pyarrow raised
        return None
    return rows
