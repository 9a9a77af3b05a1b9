"""Ingest's image step: check, resize and re-encode one image (img2dataset's resize modes).

Modes: `no` (keep the pixels; the original bytes are kept when already in the output format),
`keep_ratio` (smallest side -> image_size), `center_crop` (then a centered square), `border` (largest
side -> image_size, then pad to a square with black). Downscaling decodes JPEGs at a reduced size
(`Image.draft`) when possible and uses Lanczos with a reducing gap, close to cv2's INTER_AREA that
img2dataset uses, at a fraction of the cost.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

from clipstack.data.shards import DEFAULT_MAX_PIXELS, SampleError, load_image, open_image
from clipstack.errors import ConfigError

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border")
ENCODE_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_PIL_TO_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class ResizedImage:
    data: bytes
    ext: str
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str


@dataclass
class Resizer:
    """Turns encoded bytes into the stored image; raises `SampleError` with the drop reason."""

    image_size: int = 256
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = False
    encode_format: str = "jpg"
    encode_quality: int = 95
    min_image_size: int = 0
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode={self.resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")
        if self.encode_format not in ENCODE_FORMATS:
            raise ConfigError(f"encode_format={self.encode_format!r}: expected one of "
                              f"{', '.join(ENCODE_FORMATS)}")
        if self.image_size < 1:
            raise ConfigError(f"image_size={self.image_size}: must be >= 1")
        if not 0 <= self.encode_quality <= 100:
            raise ConfigError(f"encode_quality={self.encode_quality}: expected 0..100")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ConfigError(f"max_pixels={self.max_pixels}: must be >= 1 (None for no limit)")
        if self.min_image_size < 0:
            raise ConfigError(f"min_image_size={self.min_image_size}: must be >= 0")

    def __call__(self, data: bytes) -> ResizedImage:
        img = open_image(data, max_pixels=self.max_pixels, load=False)
        orig_w, orig_h = img.size
        if min(orig_w, orig_h) < self.min_image_size:
            raise SampleError("too_small", f"{orig_w}x{orig_h} is below the minimum side {self.min_image_size}")
        target = self._target_size(orig_w, orig_h)
        if self.resize_mode == "no" and _PIL_TO_EXT.get(img.format or "") == self.encode_format:
            load_image(img)  # validate the whole file, but store the original bytes untouched
            return ResizedImage(data, self.encode_format, orig_w, orig_h, orig_w, orig_h, _sha(data))
        if target is not None and img.format == "JPEG" and target[0] * 2 <= orig_w:
            img.draft("RGB", target)  # decode at 1/2..1/8 size, still >= target
        load_image(img)
        img = _to_rgb(img)
        if target is not None and img.size != target:
            img = img.resize(target, _lanczos(), reducing_gap=3.0)
        if self.resize_mode == "center_crop":
            w, h = img.size
            left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
            img = img.crop((left, top, left + self.image_size, top + self.image_size))
        elif self.resize_mode == "border":
            img = _pad_square(img, self.image_size)
        out = self._encode(img)
        return ResizedImage(out, self.encode_format, img.size[0], img.size[1], orig_w, orig_h, _sha(out))

    def _target_size(self, w: int, h: int) -> tuple[int, int] | None:
        """Size to resize to before any crop/pad, or None to keep the pixels."""
        s = self.image_size
        if self.resize_mode == "no":
            return None
        if self.resize_mode in ("keep_ratio", "center_crop"):
            if self.resize_only_if_bigger and min(w, h) <= s:
                return None if self.resize_mode == "keep_ratio" else _fit_short(w, h, min(w, h))
            return _fit_short(w, h, s)
        if self.resize_only_if_bigger and max(w, h) <= s:
            return None
        scale = s / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))

    def _encode(self, img: Any) -> bytes:
        buf = io.BytesIO()
        fmt = ENCODE_FORMATS[self.encode_format]
        kwargs: dict[str, Any] = {}
        if fmt in ("JPEG", "WEBP"):
            kwargs["quality"] = self.encode_quality
        img.save(buf, fmt, **kwargs)
        return buf.getvalue()


def _fit_short(w: int, h: int, s: int) -> tuple[int, int]:
    if w <= h:
        return s, max(1, round(h * s / w))
    return max(1, round(w * s / h)), s


def _pad_square(img: Any, size: int):
    from PIL import Image

    if img.size == (size, size):
        return img
    canvas = Image.new("RGB", (max(size, img.size[0]), max(size, img.size[1])))
    canvas.paste(img, ((canvas.size[0] - img.size[0]) // 2, (canvas.size[1] - img.size[1]) // 2))
    return canvas


def _to_rgb(img: Any):
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: converting straight to RGB would show whatever the transparent pixels hold.
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def _lanczos():
    from PIL import Image

    return Image.Resampling.LANCZOS


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
