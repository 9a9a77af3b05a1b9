"""Helpers for the synthetic-data tests: a small generated folder and independent defect detectors."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from clipstack.data.synthetic.concepts import SHAPE_WORDS

HIGH_RATES = {"exact_duplicate": 0.05, "near_duplicate": 0.05, "mismatched_caption": 0.05,
              "empty_caption": 0.04, "short_caption": 0.04, "non_utf8_caption": 0.04,
              "corrupt_image": 0.04, "truncated_image": 0.04, "too_small": 0.04}


def decode(data: bytes) -> Image.Image | None:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except Exception:  # noqa: BLE001 - any failure means the file is broken
        return None


def thumb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float32)


def mentions_shape(text: str, shape: str) -> bool:
    """Whether `text` names `shape` by any of its synonyms (whole words)."""
    words = {w for w in SHAPE_WORDS[shape] if w not in ("heart shape",)}
    return any(re.search(rf"\b{re.escape(w)}s?\b", text, re.IGNORECASE) for w in words)
