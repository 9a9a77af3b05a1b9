"""Image preprocessing, PIL image (or encoded bytes) in, normalized tensor out: OpenCLIP-equivalent.

Makes the same PIL calls as open_clip's `image_transform` (torchvision Resize/CenterCrop/
RandomResizedCrop/ToTensor/Normalize), so a decoded PIL image gets open_clip's pixels within 1/255,
with PIL and torch only. The random resized crop draws its parameters from torch's RNG in torchvision's
order, so with the same seed it picks the same crops. The uint8 -> float normalize is one multiply-add.

Images not decoded yet (encoded bytes, or fresh from `Image.open`, as in a data loader) take a fast
path, ~2x open_clip's speed per core: a JPEG at least twice the needed size is decoded at 1/2, 1/4 or
1/8 scale (`Image.draft`, in libjpeg's DCT), and RGB/L resizing runs on torch's SIMD uint8 antialiased
kernel (a port of Pillow's filters). The result is within ~2/255 of open_clip's on average; pass
`fast=False` for exact parity.
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
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), fill_color: int = 0, fast: bool = True):
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
        self.fast = fast
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
                f"scale={self.scale}, fast={self.fast})")

    def __call__(self, img: Any):
        from PIL import Image

        if isinstance(img, bytes | bytearray | memoryview):
            img = Image.open(io.BytesIO(img))
        # Fast path only for images not decoded yet: a loaded PIL image gets open_clip's exact pixels.
        fast = self.fast and bool(getattr(img, "tile", None))
        if self.is_train:
            out = self._train(img, fast)
        elif self.resize_mode == "shortest":
            out = self._shortest(img, fast)
        elif self.resize_mode == "squash":
            size_wh = (self.size[1], self.size[0])
            if fast:
                self._draft(img, size_wh)
            out = _rgb(_resize(img, size_wh, self.resample, fast))
        else:
            out = self._longest(img, fast)
        return self.to_tensor(out)

    def to_tensor(self, img: Any):
        """RGB PIL image (or uint8 tensor [3, H, W]) -> normalized float tensor [3, H, W]."""
        import numpy as np
        import torch

        if not isinstance(img, torch.Tensor):
            img = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        return torch.addcmul(self._add, img.float(), self._mul)

    # -- the three eval modes and training ---------------------------------------------------------------

    def _shortest(self, img: Any, fast: bool):
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
        if fast:
            self._draft(img, (nw, nh))
        # Full resize then crop, as torchvision does: resizing only the crop window would let Pillow
        # pick another order for its two passes, and round differently by several levels.
        return _center_crop_or_pad(_rgb(_resize(img, (nw, nh), self.resample, fast)), (th, tw), 0)

    def _longest(self, img: Any, fast: bool):
        th, tw = self.size
        w, h = img.size
        ratio = max(h / th, w / tw)
        nh, nw = round(h / ratio), round(w / ratio)
        if fast:
            self._draft(img, (nw, nh))
        resized = _rgb(_resize(img, (nw, nh), self.resample, fast))
        return _center_crop_or_pad(resized, (th, tw), self.fill_color)

    def _train(self, img: Any, fast: bool):
        th, tw = self.size
        w0, h0 = img.size
        i, j, ch, cw = random_resized_crop_params(w0, h0, self.scale, self.ratio)
        box: tuple[float, ...] = (j, i, j + cw, i + ch)
        if fast and self._draft(img, (math.ceil(w0 * tw / cw), math.ceil(h0 * th / ch))):
            fx, fy = img.size[0] / w0, img.size[1] / h0
            box = (round(j * fx), round(i * fy), round((j + cw) * fx), round((i + ch) * fy))
        # torchvision crops first, so the filter sees no pixels outside the crop: do the same.
        return _rgb(_resize(img.crop(box), (tw, th), self.resample, fast))

    def _draft(self, img: Any, needed_wh: tuple[int, int]) -> bool:
        """Ask libjpeg for the smallest 1/2^k decode still >= `needed_wh`; True if the size changed."""
        if getattr(img, "format", None) != "JPEG" or len(getattr(img, "tile", ())) != 1:
            return False
        before = img.size
        img.draft("RGB", (max(1, needed_wh[0]), max(1, needed_wh[1])))
        return img.size != before


def _triple(values: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(values, int | float):
        return (float(values),) * 3
    vals = tuple(values)
    return (vals[0],) * 3 if len(vals) == 1 else (vals[0], vals[1], vals[2])


def _resize(img: Any, size_wh: tuple[int, int], resample: Any, fast: bool = False):
    """Antialiased resize: PIL's (exact), or for RGB/L images on the fast path torch's uint8 kernel
    (then the result is a uint8 tensor [C, h, w], which the crop and normalize steps take as is).

    torch's antialiased bicubic/bilinear on uint8 (`interpolate(..., antialias=True)`) ports Pillow's
    filters (a = -0.5, same supports, 8-bit intermediate) to SIMD and runs ~4x faster than Pillow's own
    on a 512-px image; it rounds coefficients more coarsely, so a few pixels differ by one level (two on
    pure noise). Palette and other modes keep PIL's path (Pillow resizes "P" by nearest neighbour).
    """
    from PIL import Image

    if img.size == tuple(size_wh):
        img.load()
        return img
    if not fast or img.mode not in ("RGB", "L") or resample not in (Image.Resampling.BICUBIC,
                                                                     Image.Resampling.BILINEAR):
        return img.resize(size_wh, resample)
    import numpy as np
    import torch
    import torch.nn.functional as F

    arr = np.array(img)  # a writable copy: torch refuses read-only buffers
    x = torch.from_numpy(arr if arr.ndim == 3 else arr[:, :, None]).permute(2, 0, 1).unsqueeze(0)
    mode = "bicubic" if resample == Image.Resampling.BICUBIC else "bilinear"
    (w0, h0), (w, h) = img.size, size_wh
    if h0 > h and h0 - h > 2 * (w0 - w):
        # Pillow (>= 11) runs the vertical pass first in this case; torch always starts horizontally,
        # so split the calls to keep the same order (and rounding) as Pillow's result.
        x = F.interpolate(x, size=(h, w0), mode=mode, antialias=True, align_corners=False)
    return F.interpolate(x, size=(h, w), mode=mode, antialias=True, align_corners=False)[0]  # uint8 [C,h,w]


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _rgb(img: Any):
    # After the resize, as open_clip's MaybeConvertMode: palette images resize by nearest neighbour.
    if _is_tensor(img):  # a uint8 tensor from the fast resize; L -> RGB repeats the channel
        return img if img.shape[0] == 3 else img.expand(3, -1, -1)
    return img if img.mode == "RGB" else img.convert("RGB")


def _center_crop_or_pad(img: Any, size_hw: tuple[int, int], fill: int):
    """torchvision's center crop (pads with `fill` where the image is smaller), on an RGB image."""
    from PIL import Image

    th, tw = size_hw
    if _is_tensor(img):  # a uint8 tensor [3, h, w]
        return _center_crop_or_pad_tensor(img, size_hw, fill)
    w, h = img.size
    if tw > w or th > h:
        canvas = Image.new("RGB", (max(w, tw), max(h, th)), (fill,) * 3)
        canvas.paste(img, ((tw - w) // 2 if tw > w else 0, (th - h) // 2 if th > h else 0))
        img, (w, h) = canvas, canvas.size
        if (w, h) == (tw, th):
            return img
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def _center_crop_or_pad_tensor(x: Any, size_hw: tuple[int, int], fill: int):
    import torch

    th, tw = size_hw
    h, w = x.shape[-2:]
    if tw > w or th > h:
        canvas = torch.full((x.shape[0], max(h, th), max(w, tw)), fill, dtype=x.dtype)
        top, left = (th - h) // 2 if th > h else 0, (tw - w) // 2 if tw > w else 0
        canvas[:, top:top + h, left:left + w] = x
        x, (h, w) = canvas, canvas.shape[-2:]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[:, top:top + th, left:left + tw]


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
    An image passed as encoded bytes (or fresh from `Image.open`) takes the fast path: JPEGs decode at
    reduced size when at least twice the target (`Image.draft`) and resizing runs on torch's SIMD uint8
    kernel; this is ~2x faster per core and within ~2/255 of open_clip on average. A decoded PIL image,
    or `fast=False`, gives open_clip's pixels within 1/255.
    """
    return ImageTransform(image_size, is_train, mean=mean, std=std, resize_mode=resize_mode,
                          interpolation=interpolation, scale=scale, **kwargs)


def preprocess_from_cfg(cfg: dict[str, Any], is_train: bool, **kwargs: Any) -> ImageTransform:
    """Build from an open_clip `preprocess_cfg` dict (`size`, `mean`, `std`, `interpolation`, ...)."""
    return image_transform(cfg.get("size", 224), is_train, mean=cfg.get("mean") or OPENAI_MEAN,
                           std=cfg.get("std") or OPENAI_STD, resize_mode=cfg.get("resize_mode") or "shortest",
                           interpolation=cfg.get("interpolation") or "bicubic",
                           fill_color=cfg.get("fill_color", 0), **kwargs)
