"""Tiny real evaluation sets for the evaluate tests: CLIP_benchmark WDS tars, image folders, CSV tables."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30), (200, 30, 210), (20, 210, 210)]
NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan"]


def png(color, size: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None, :] + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_tars(split_dir: Path, samples: list[dict[str, bytes]], nshards: int = 1) -> None:
    """Samples are dicts ext -> bytes; written round-robin-free in order over `nshards` tars."""
    split_dir.mkdir(parents=True, exist_ok=True)
    per = -(-len(samples) // nshards)
    for i in range(nshards):
        with tarfile.open(split_dir / f"{i}.tar", "w") as tf:
            for j, s in enumerate(samples[i * per:(i + 1) * per]):
                key = f"s{i * per + j:07d}"
                for ext, data in s.items():
                    _add(tf, f"{key}.{ext}", data)
    (split_dir / "nshards.txt").write_text(f"{nshards}\n")


def write_wds_classification(root: Path, n_classes: int = 3, per_class: int = 4,
                             splits=("test",), templates=("a photo of a {c}.",), nshards: int = 1,
                             classnames: bool = True) -> Path:
    for si, split in enumerate(splits):
        samples = [{"png": png(COLORS[c], seed=100 * si + 10 * c + k), "cls": str(c).encode()}
                   for k in range(per_class) for c in range(n_classes)]
        write_tars(root / split, samples, nshards)
    if classnames:
        (root / "classnames.txt").write_text("\n".join(NAMES[:n_classes]) + "\n")
    if templates:
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return root


def write_wds_multilabel(root: Path, n_classes: int = 3, n: int = 6) -> Path:
    samples = []
    for k in range(n):
        vec = np.zeros(n_classes, dtype=np.int64)
        vec[k % n_classes] = 1
        vec[(k + 1) % n_classes] = k % 2
        buf = io.BytesIO()
        np.save(buf, vec)
        samples.append({"jpg": _jpeg(COLORS[k % n_classes]), "npy": buf.getvalue()})
    write_tars(root / "test", samples)
    (root / "classnames.txt").write_text("\n".join(NAMES[:n_classes]) + "\n")
    (root / "dataset_type.txt").write_text("multilabel\n")
    return root


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="JPEG")
    return buf.getvalue()


def write_wds_retrieval(root: Path, n_images: int = 4, caps: int = 2) -> Path:
    samples = [{"jpg": _jpeg(COLORS[i % len(COLORS)]),
                "txt": "\n".join(f"a {NAMES[i % len(NAMES)]} square, take {c}" for c in range(caps)).encode()}
               for i in range(n_images)]
    write_tars(root / "test", samples)
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


def write_image_folder(root: Path, n_classes: int = 3, per_class: int = 2, splits=None) -> Path:
    for split in splits or [None]:
        base = root / split if split else root
        for c in range(n_classes):
            d = base / NAMES[c].replace("e", "e_", 1).rstrip("_")
            d.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                (d / f"{k}.png").write_bytes(png(COLORS[c], seed=k))
    return root


def write_retrieval_csv(root: Path, n_images: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    rows = ["image,caption"]
    for i in range(n_images):
        (root / "img" / f"{i}.jpg").write_bytes(_jpeg(COLORS[i]))
        rows += [f"img/{i}.jpg,a {NAMES[i]} square", f"img/{i}.jpg,\"a square, {NAMES[i]}\""]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root
