"""File names of an embedding folder (clip-retrieval's layout) and of an index folder.

Embedding folder, as clip-retrieval's inference writes it, one part per input shard:
`img_emb/img_emb_{i}.npy`, `text_emb/text_emb_{i}.npy`, `metadata/metadata_{i}.parquet`; clipstack adds
`thumbs/thumbs_{i}.parquet` (small JPEGs for the web page) and `embed_info.json` (model, dimension).
A part is complete when its metadata file exists: it is written last.

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
