"""A small pool of real shards with known defects, shared by the curation tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from clipstack.data.shards import Sample, write_shard


def image_bytes(seed: int, size=(64, 48), fmt="JPEG") -> bytes:
    """A distinct, textured image per seed (smooth blobs, so JPEG keeps its perceptual hash)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, fmt, quality=92)
    return buf.getvalue()


def near_copy(data: bytes) -> bytes:
    """Same picture, re-encoded at another quality with a slight brightness change."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    arr = np.clip(np.asarray(img, dtype=np.int16) + 3, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=70)
    return buf.getvalue()


CAPTIONS = ["a red cat sleeping on a sofa", "a dog running in the park", "two birds on a wire",
            "a bowl of fresh fruit on the table", "sunset over the sea with boats", "a cat and a dog playing"]


def write_pool(out_dir, n_clean: int = 24) -> dict[str, str]:
    """Two shards: clean samples plus one of each defect. Returns key -> expected (step, reason)."""
    expected: dict[str, str] = {}
    clean = []
    for i in range(n_clean):
        clean.append(Sample(f"00000{i:04d}", image_bytes(i), [f"{CAPTIONS[i % len(CAPTIONS)]} number {i}"],
                            meta={"width": 64, "height": 48}))
    shard0 = list(clean[:12])
    k = 100
    def key():
        nonlocal k
        k += 1
        return f"00000{k:04d}"
    defects = [
        ("text:empty_caption", Sample(key(), image_bytes(200), [""])),
        ("text:junk_file_name", Sample(key(), image_bytes(201), ["IMG_1234.JPG"])),
        ("text:junk_camera_id", Sample(key(), image_bytes(202), ["DSC_0042"])),
        ("text:non_utf8", Sample(key(), image_bytes(203), ["x"], txt=b"caf\xe9 au lait")),
        ("basic:few_words", Sample(key(), image_bytes(204), ["lovely cat"])),
        ("basic:small_image", Sample(key(), image_bytes(205, size=(20, 16)), ["a small picture of a cat"])),
        ("basic:aspect_ratio", Sample(key(), image_bytes(206, size=(200, 40)), ["a very wide banner of a dog"])),
        ("read:corrupt_image", Sample(key(), image_bytes(207)[:60], ["a broken image of a bird"])),
        ("exact:duplicate", Sample(key(), clean[0].image, ["another caption for the same cat"])),
        ("phash:near_duplicate", Sample(key(), near_copy(clean[1].image), ["the dog again in the park"])),
        ("caption:duplicate", Sample(key(), image_bytes(208), ["A red cat sleeping on a sofa, number 0!"])),
    ]
    shard0 += [s for _, s in defects]
    for reason, sample in defects:
        expected[sample.key] = reason
    write_shard(out_dir, 0, shard0)
    shard1 = [Sample(f"00001{i:04d}", s.image, s.captions, meta=s.meta) for i, s in enumerate(clean[12:])]
    write_shard(out_dir, 1, shard1)
    return expected
