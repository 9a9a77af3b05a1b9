"""Image preprocessing, PIL image (or encoded bytes) in, normalized tensor out: OpenCLIP-equivalent.

Matches open_clip's `image_transform` (torchvision Resize/CenterCrop/RandomResizedCrop/ToTensor/
Normalize) pixel for pixel on a loaded image, but with PIL and torch only, and faster:
- a JPEG that is not decoded yet (fresh from `Image.open`, or passed as bytes) is decoded at 1/2, 1/4
  or 1/8 size with `Image.draft` whenever that size still covers the output; this happens only when
  the source is at least twice the target, and then differs from a full decode by a few levels;
- the uint8 -> float normalize is one fused multiply-add.
The random resized crop draws its parameters from torch's RNG in torchvision's order, so with the same
seed it picks the same crops as open_clip.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "random")


def _size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    size = tuple(int(s) for s in image_size)
    return (size[0], size[0]) if len(size) == 1 else (size[-2], size[-1])


class ImageTransform:
    """The callable `image_transform` returns: `transform(img_or_bytes) -> FloatTensor[3, H, W]`."""

    def __init__(self, image_size: int | Sequence[int], is_train: bool, mean: Sequence[float] = OPENAI_MEAN,
                 std: Sequence[float] = OPENAI_STD, resize_mode: str = "shortest",
                 interpolation: str = "bicubic", scale: tuple[float, float] = (0.9, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), fill_color: int = 0, draft: bool = True):
        import torch
        from PIL import Image

        from clipstack.errors import ConfigError

        if resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode={resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation={interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"scale={scale!r}: expected 0 < min <= max <= 1")
        self.size = _size_hw(image_size)
        self.is_train = is_train
        self.resize_mode = resize_mode
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.fill_color = fill_color
        self.draft = draft
        # open_clip maps "random" to bicubic at eval, and always crops bicubic in training.
        bilinear = interpolation == "bilinear" and not is_train
        self.resample = Image.Resampling.BILINEAR if bilinear else Image.Resampling.BICUBIC
        mean_t = torch.tensor([float(m) for m in _triple(mean)]).view(3, 1, 1)
        std_t = torch.tensor([float(s) for s in _triple(std)]).view(3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add on the uint8 pixels.
        self._mul = 1.0 / (255.0 * std_t)
        self._add = -mean_t / std_t

    def __repr__(self) -> str:
        kind = "train" if self.is_train else "eval"
        return (f"ImageTransform({kind}, size={self.size}, resize_mode={self.resize_mode!r}, "
                f"scale={self.scale}, draft={self.draft})")

    def __call__(self, img: Any):
        from PIL import Image

        if isinstance(img, bytes | bytearray | memoryview):
            img = Image.open(io.BytesIO(img))
        if self.is_train:
            out = self._train(img)
        elif self.resize_mode == "shortest":
            out = self._shortest(img)
        elif self.resize_mode == "squash":
            self._draft(img, (self.size[1], self.size[0]))
            out = _rgb(_resize(img, (self.size[1], self.size[0]), self.resample))
        else:
            out = self._longest(img)
        return self.to_tensor(out)

    def to_tensor(self, img: Any):
        """RGB PIL image -> normalized float tensor [3, H, W]."""
        import numpy as np
        import torch

        arr = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        return torch.addcmul(self._add, arr.float(), self._mul)

    # -- the three eval modes and training ---------------------------------------------------------------

    def _shortest(self, img: Any):
        th, tw = self.size
        w, h = img.size
        if th == tw:  # torchvision Resize(int): short side -> size, long side truncated
            if w <= h:
                nw, nh = th, int(th * h / w)
            else:
                nw, nh = int(tw * w / h), tw
        else:  # open_clip's ResizeKeepRatio for non-square targets rounds both sides
            ratio = min(h / th, w / tw)
            nh, nw = round(h / ratio), round(w / ratio)
        if nw >= tw and nh >= th and self._draft(img, (nw, nh)):
            # Already approximate (DCT-domain reduction), so also resize only the crop window: Pillow's
            # filter reads the pixels around the box, so this is the same crop, ~25% cheaper.
            top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
            sx, sy = img.size[0] / nw, img.size[1] / nh
            box = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy)
            return _rgb(img.resize((tw, th), self.resample, box=box))
        # Full resize then crop, exactly torchvision's calls: Pillow picks its two passes' order per
        # call, so resizing only the crop window (box=) can round differently by several levels.
        return _center_crop_or_pad(_rgb(_resize(img, (nw, nh), self.resample)), (th, tw), 0)

    def _longest(self, img: Any):
        th, tw = self.size
        w, h = img.size
        ratio = max(h / th, w / tw)
        nh, nw = round(h / ratio), round(w / ratio)
        self._draft(img, (nw, nh))
        resized = _rgb(_resize(img, (nw, nh), self.resample))
        return _center_crop_or_pad(resized, (th, tw), self.fill_color)

    def _train(self, img: Any):
        th, tw = self.size
        w0, h0 = img.size
        i, j, ch, cw = random_resized_crop_params(w0, h0, self.scale, self.ratio)
        if self._draft(img, (math.ceil(w0 * tw / cw), math.ceil(h0 * th / ch))):
            # Approximate already: resample the crop window straight from the reduced decode.
            fx, fy = img.size[0] / w0, img.size[1] / h0
            box = (j * fx, i * fy, (j + cw) * fx, (i + ch) * fy)
            return _rgb(img.resize((tw, th), self.resample, box=box))
        # torchvision crops first, so the filter sees no pixels outside the crop: do the same.
        return _rgb(_resize(img.crop((j, i, j + cw, i + ch)), (tw, th), self.resample))

    def _draft(self, img: Any, needed_wh: tuple[int, int]) -> bool:
        """Ask libjpeg for the smallest 1/2^k decode still >= `needed_wh`; True if the size changed."""
        if not self.draft or getattr(img, "format", None) != "JPEG" or len(getattr(img, "tile", ())) != 1:
            return False
        before = img.size
        img.draft("RGB", (max(1, needed_wh[0]), max(1, needed_wh[1])))
        return img.size != before


def _triple(values: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(values, int | float):
        return (float(values),) * 3
    vals = tuple(values)
    return (vals[0],) * 3 if len(vals) == 1 else (vals[0], vals[1], vals[2])


def _resize(img: Any, size_wh: tuple[int, int], resample: Any, box: tuple[float, ...] | None = None):
    if box is None and img.size == tuple(size_wh):
        img.load()
        return img
    return img.resize(size_wh, resample, box=box)


def _rgb(img: Any):
    # After the resize, as open_clip's MaybeConvertMode: palette images resize by nearest neighbour.
    return img if img.mode == "RGB" else img.convert("RGB")


def _center_crop_or_pad(img: Any, size_hw: tuple[int, int], fill: int):
    """torchvision's center crop (pads with `fill` where the image is smaller), on an RGB image."""
    from PIL import Image

    th, tw = size_hw
    w, h = img.size
    if tw > w or th > h:
        canvas = Image.new("RGB", (max(w, tw), max(h, th)), (fill,) * 3)
        canvas.paste(img, ((tw - w) // 2 if tw > w else 0, (th - h) // 2 if th > h else 0))
        img, (w, h) = canvas, canvas.size
        if (w, h) == (tw, th):
            return img
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def random_resized_crop_params(width: int, height: int, scale: Sequence[float],
                               ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params (same torch RNG draws): (top, left, h, w)."""
    import torch

    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,)).item())
            j = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def image_transform(image_size: int | Sequence[int], is_train: bool, mean: Sequence[float] = OPENAI_MEAN,
                    std: Sequence[float] = OPENAI_STD, resize_mode: str = "shortest",
                    interpolation: str = "bicubic", scale: tuple[float, float] = (0.9, 1.0),
                    **kwargs: Any) -> ImageTransform:
    """OpenCLIP-equivalent preprocessing: `fn(PIL image or encoded bytes) -> FloatTensor[3, H, W]`.

    Eval: resize (`shortest` side + center crop, `longest` side + pad with `fill_color`, or `squash`),
    RGB, normalize. Train: random resized crop with `scale` (and `ratio`), RGB, normalize.
    `draft=False` turns off reduced-size JPEG decoding (then outputs match open_clip within 1/255).
    """
    return ImageTransform(image_size, is_train, mean=mean, std=std, resize_mode=resize_mode,
                          interpolation=interpolation, scale=scale, **kwargs)


def preprocess_from_cfg(cfg: dict[str, Any], is_train: bool, **kwargs: Any) -> ImageTransform:
    """Build from an open_clip `preprocess_cfg` dict (`size`, `mean`, `std`, `interpolation`, ...)."""
    return image_transform(cfg.get("size", 224), is_train, mean=cfg.get("mean") or OPENAI_MEAN,
                           std=cfg.get("std") or OPENAI_STD, resize_mode=cfg.get("resize_mode") or "shortest",
                           interpolation=cfg.get("interpolation") or "bicubic",
                           fill_color=cfg.get("fill_color", 0), **kwargs)
