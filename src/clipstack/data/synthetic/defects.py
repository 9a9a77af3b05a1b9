"""Injected defects: what a crawl gets wrong, applied to otherwise clean samples at tunable rates.

Each function takes the clean content and returns the broken version; which sample gets which defect
is recorded only in the hidden ground truth, never in the sample, so curation can be scored.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Defect names and default rates (fractions of the pool). The rest is clean.
DEFAULT_RATES: dict[str, float] = {
    "exact_duplicate": 0.03,
    "near_duplicate": 0.03,
    "mismatched_caption": 0.05,
    "empty_caption": 0.01,
    "short_caption": 0.02,
    "non_utf8_caption": 0.01,
    "corrupt_image": 0.005,
    "truncated_image": 0.005,
    "too_small": 0.02,
}
DEFECTS = list(DEFAULT_RATES)
TOO_SMALL_SIDE = 64  # a too-small image has its shorter side below this; clean images have >= 96
SHORT_WORDS = ["image", "photo", "pic", "untitled", "img", "thumbnail", "art", "jpg", "?", "shape",
               "default", "null", "download", "preview"]


def pick_defect(u: float, rates: dict[str, float]) -> str:
    """Map one uniform draw to a defect name (or "clean") by cumulative rate."""
    acc = 0.0
    for name in DEFECTS:
        acc += rates.get(name, 0.0)
        if u < acc:
            return name
    return "clean"


def encode(img: Image.Image, ext: str, quality: int) -> bytes:
    """Deterministic encoding: fixed quality, no optimizer passes, no timestamps or EXIF."""
    buf = io.BytesIO()
    if ext == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def near_duplicate(image: bytes, rng: np.random.Generator) -> tuple[bytes, str, int, int]:
    """Re-encode, resize or slightly crop the original; returns (jpeg bytes, kind, width, height)."""
    img = Image.open(io.BytesIO(image)).convert("RGB")
    kind = ["reencode", "resize", "crop", "crop_resize"][rng.integers(4)]
    if "crop" in kind:
        w, h = img.size
        fx, fy = rng.uniform(0.02, 0.07, size=2)
        img = img.crop((int(w * fx), int(h * fy), w - int(w * fx), h - int(h * fy)))
    if "resize" in kind:
        scale = rng.uniform(0.6, 0.9)
        w, h = img.size
        img = img.resize((max(96, int(w * scale)), max(96, int(h * scale))), Image.BICUBIC)
    data = encode(img, "jpg", int(rng.integers(55, 80)))
    return data, kind, img.size[0], img.size[1]


def too_small(image: bytes, rng: np.random.Generator) -> tuple[bytes, int, int]:
    """Downscale so the shorter side is 16-56 px (below `TOO_SMALL_SIDE`)."""
    img = Image.open(io.BytesIO(image)).convert("RGB")
    w, h = img.size
    short = int(rng.integers(16, 57))
    scale = short / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    size = (min(size[0], TOO_SMALL_SIDE * 3), min(size[1], TOO_SMALL_SIDE * 3))
    img = img.resize(size, Image.BILINEAR)
    return encode(img, "jpg", 85), img.size[0], img.size[1]


def corrupt(image: bytes, rng: np.random.Generator) -> bytes:
    """Keep the JPEG/PNG signature, replace the rest with random bytes (a broken upload)."""
    body = rng.integers(0, 256, size=max(64, len(image) // 2), dtype=np.uint8).tobytes()
    return image[:4] + body


def truncate(image: bytes, rng: np.random.Generator) -> bytes:
    """Cut the file at 20-70% of its length (an interrupted download)."""
    return image[: max(16, int(len(image) * rng.uniform(0.2, 0.7)))]


def short_caption(rng: np.random.Generator, shape_word: str, color_word: str) -> str:
    """One or two words: mostly uninformative, sometimes a terse but correct "red circle"."""
    roll = rng.random()
    if roll < 0.6:
        return SHORT_WORDS[rng.integers(len(SHORT_WORDS))]
    if roll < 0.8:
        return shape_word
    return f"{color_word} {shape_word}"


def non_utf8(caption: str, rng: np.random.Generator) -> bytes:
    """Caption bytes in a legacy encoding (cp1252) with accented or symbol characters: invalid UTF-8."""
    extras = [" – café", " © naïve", " (€ 5)", " ½ size", " déjà vu", " « best »"]
    text = caption + extras[rng.integers(len(extras))]
    return text.encode("cp1252", errors="replace")
