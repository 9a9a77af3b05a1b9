"""Decode + transform throughput per worker: clipstack's loader path against open_clip's webdataset pipeline.

Both read the same real shard (photo-like JPEGs written by `write_shard`) in one process with one torch
thread, as one DataLoader worker would, and produce 224-px normalized tensors:
- open_clip: `wds.WebDataset(url).decode("pilrgb").to_tuple("jpg", "txt")` + open_clip's
  `image_transform` (torchvision), exactly what its `get_wds_dataset` builds;
- clipstack: `iter_shard` + `image_transform` on the JPEG bytes: its default fast path (reduced-size
  decoding with `Image.draft` when the source is at least twice the target, torch's SIMD uint8 resize)
  and `fast=False` (open_clip's exact pixels: PIL decode and resize, fused normalize).
Two image sets: smallest side 512 (img2dataset `keep_ratio` at 512, where draft applies) and longest
side 512 (1/2-scale decoding would fall below 224 except for the square ones, so mostly no draft).
Prints images per CPU-second (the per-core rate, fair on a shared machine), images per wall second, and
the CPU-rate ratio to open_clip in the same mode.
Run: `.venv/bin/python benchmarks/loader.py [--images 120] [--repeats 2]`.
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from clipstack.data.shards import Sample, iter_shard, write_shard
from clipstack.data.transforms import image_transform


def _allow_torchvision_import() -> None:
    """The pinned torchvision is a CUDA build; on CPU torch it imports once two op schemas exist."""
    if torch.version.cuda is None:
        try:
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _allow_torchvision_import.lib = lib  # keep the registration alive
        except RuntimeError:
            pass


def photo(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Smooth color fields, shapes and sensor-like noise: compresses and decodes like a photo."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c = rng.uniform(0, 1, size=(3, 3))
    arr = np.stack([128 + 100 * np.sin(xx / (40 + 60 * c[i, 0]) + c[i, 1] * 6) * np.cos(yy / (50 + 50 * c[i, 2]))
                    for i in range(3)], axis=-1)
    arr += rng.normal(0, 6, size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img.filter(ImageFilter.GaussianBlur(0.8))


def make_shard(out: Path, n: int, short_side: bool, seed: int = 0) -> tuple[str, float]:
    rng = np.random.default_rng(seed)
    shapes = [(512, 512), (683, 512), (512, 683), (768, 512)] if short_side else \
             [(512, 512), (512, 384), (384, 512), (512, 341)]
    samples, pixels = [], 0
    for i in range(n):
        w, h = shapes[i % len(shapes)]
        buf = io.BytesIO()
        photo(w, h, rng).save(buf, "JPEG", quality=90)
        samples.append(Sample(f"{i:09d}", buf.getvalue(), [f"photo {i}"]))
        pixels += w * h
    write_shard(out, 0, samples)
    return str(out / "00000.tar"), pixels / n


def run_open_clip(url: str, preprocess) -> int:
    import webdataset as wds

    ds = wds.WebDataset(url, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "txt")
    n = 0
    for img, _ in ds:
        preprocess(img)
        n += 1
    return n


def run_clipstack(url: str, preprocess) -> int:
    n = 0
    for raw in iter_shard(url):
        preprocess(raw["jpg"])
        n += 1
    return n


def best_rate(fn, url: str, preprocess, repeats: int) -> tuple[float, float]:
    """(images per CPU-second of this process, images per wall-clock second), best of `repeats`.

    CPU time is the per-core figure and stays fair on a shared machine; wall time is shown beside it.
    """
    fn(url, preprocess)  # warm caches and imports
    cpu, wall = [], []
    for _ in range(repeats):
        torch.manual_seed(0)
        c0, t0 = time.process_time(), time.perf_counter()
        n = fn(url, preprocess)
        cpu.append(n / (time.process_time() - c0))
        wall.append(n / (time.perf_counter() - t0))
    return max(cpu), max(wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=120, help="images per set (default 120)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes, best kept (default 2)")
    p.add_argument("--size", type=int, default=224, help="output side (default 224)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one DataLoader worker
    _allow_torchvision_import()
    import open_clip

    print(f"# decode + transform, 1 process x 1 thread, {args.images} images/set, best of {args.repeats}")
    print(f"# {platform.processor() or platform.machine()}, python {sys.version.split()[0]}, "
          f"torch {torch.__version__}, open_clip {open_clip.__version__}, Pillow {Image.__version__}")
    header = (f"| {'image set':<24} | {'mode':<5} | {'pipeline':<27} | {'img/CPU-s':>9} | {'img/s wall':>10} "
              f"| {'vs open_clip':>12} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for short_side in (True, False):
            url, mean_px = make_shard(Path(tmp) / ("short" if short_side else "long"), args.images, short_side)
            label = ("short side 512" if short_side else "long side 512") + f" ({mean_px / 1e3:.0f} kpx)"
            for mode, is_train in (("eval", False), ("train", True)):
                ref = best_rate(run_open_clip, url, open_clip.image_transform(args.size, is_train=is_train),
                                args.repeats)
                rows = [("open_clip wds + torchvision", ref)]
                ref_cpu = ref[0]
                ours = image_transform(args.size, is_train=is_train)
                rows.append(("clipstack (fast, default)", best_rate(run_clipstack, url, ours, args.repeats)))
                exact = image_transform(args.size, is_train=is_train, fast=False)
                rows.append(("clipstack (fast=False)", best_rate(run_clipstack, url, exact, args.repeats)))
                for name, (cpu, wall) in rows:
                    print(f"| {label:<24} | {mode:<5} | {name:<27} | {cpu:9.1f} | {wall:10.1f} "
                          f"| {cpu / ref_cpu:11.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
