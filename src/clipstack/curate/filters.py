"""Per-sample filters (DataComp's basic filter, alt-text junk, CLIP score); each returns a reason code.

A filter never raises on a bad sample: a caption that is not UTF-8 or an image that does not decode is
itself a reason. Reason codes are stable strings written to the ledger (`step`, `reason`).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

# Alt-text that names a file or a camera frame instead of describing the image.
_JUNK_PATTERNS = [
    ("file_name", re.compile(r"^\s*[\w\-. ()]*\.(jpe?g|png|gif|webp|bmp|tiff?|heic|svg)\s*$", re.I)),
    ("camera_id", re.compile(r"^\s*(img|dsc|dscn|dcim|pict?|pxl|gopr|sam|mvimg|screenshot)[\s_\-]*\d{3,}[\w\-]*\s*$",
                             re.I)),
    ("url", re.compile(r"^\s*(https?://|www\.)\S*\s*$", re.I)),
    ("placeholder", re.compile(r"^\s*(image|photo|picture|untitled|no caption|null|none|n/?a|"
                               r"thumbnail|default|unknown)\s*$", re.I)),
    ("no_letters", re.compile(r"^[^A-Za-z\u00C0-\uFFFF]*$")),
]


@dataclass
class BasicConfig:
    """DataComp's basic filter: caption > min_words words and > min_chars chars, image checks."""

    min_words: int = 2
    min_chars: int = 5
    min_side: int = 200
    max_aspect: float = 3.0


def decode_caption(raw: bytes | None, fallback: str) -> tuple[str | None, str | None]:
    """(caption, reason): the `.txt` bytes decoded, or None with `non_utf8` when they are not UTF-8."""
    if raw is None:
        return fallback, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "non_utf8"


def text_reason(caption: str | None) -> str | None:
    """`empty_caption`, `non_utf8` (None caption), or a junk pattern name; None when the text is fine."""
    if caption is None:
        return "non_utf8"
    if not caption.strip():
        return "empty_caption"
    for name, pattern in _JUNK_PATTERNS:
        if pattern.match(caption):
            return f"junk_{name}"
    return None


def load_image(data: bytes, draft: int | None = None):
    """(image, (width, height)) with the image decoded to the end, so corrupt and truncated files are
    caught; (None, None) when it does not decode. With `draft`, a JPEG is decoded at a reduced scale
    (no side below `draft` px: DCT scaling, several times faster); the size is the file's own."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        size = img.size
        if draft and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
        img.load()
        return img, size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None, None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an image that decodes fully; None if corrupt or truncated."""
    return load_image(data)[1]


def basic_reason(caption: str, size: tuple[int, int], cfg: BasicConfig) -> str | None:
    """DataComp basic filter on caption length and image geometry (English detection is not done)."""
    if len(caption.split()) <= cfg.min_words:
        return "few_words"
    if len(caption.strip()) <= cfg.min_chars:
        return "few_chars"
    width, height = size
    if min(width, height) < cfg.min_side:
        return "small_image"
    if max(width, height) / max(1, min(width, height)) > cfg.max_aspect:
        return "aspect_ratio"
    return None


def clip_score_keep(scores: np.ndarray, threshold: float | None = None,
                    fraction: float | None = None) -> np.ndarray:
    """Keep mask by CLIP score: `score >= threshold`, or the top `fraction` (ties broken by order).

    NaN scores (images that did not decode) are never kept.
    """
    scores = np.asarray(scores, dtype=np.float64)
    valid = ~np.isnan(scores)
    if threshold is not None:
        return valid & (np.nan_to_num(scores, nan=-np.inf) >= threshold)
    if fraction is None:
        raise ValueError("clip_score_keep needs a threshold or a fraction")
    k = int(round(fraction * int(valid.sum())))
    keep = np.zeros(len(scores), dtype=bool)
    if k > 0:
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
        keep[order[:k]] = True
    return keep & valid


class ClipScorer:
    """Cosine similarity of image and caption embeddings with any clipstack/OpenCLIP model."""

    def __init__(self, model: str, pretrained: str | None = None, device: str = "cpu", batch_size: int = 64):
        import torch

        from clipstack import models

        self.model, self.preprocess = models.create_model_from_pretrained(model, pretrained=pretrained,
                                                                          device=device)
        self.tokenizer = models.get_tokenizer(model)
        self.model.to(device).eval()
        self.device, self.batch_size, self.torch = device, batch_size, torch

    def embed(self, images: list, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalized (image, text) embeddings as float32 arrays, for PIL images and captions."""
        torch = self.torch
        img_out, txt_out = [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
                tokens = self.tokenizer(captions[start:start + self.batch_size])
                img_out.append(self.model.encode_image(batch.to(self.device), normalize=True).float().cpu())
                txt_out.append(self.model.encode_text(tokens.to(self.device), normalize=True).float().cpu())
        dim = int(getattr(self.model, "embed_dim", 0) or 0)
        if not img_out:
            return np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32)
        return torch.cat(img_out).numpy(), torch.cat(txt_out).numpy()

