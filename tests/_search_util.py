"""Shared set-up for the search tests: embedding folders of clustered random vectors (no model)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipstack.search import layout

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]


@pytest.fixture(autouse=True, scope="module")
def faiss_one_thread():
    """One OpenMP thread for FAISS in these tests: with 2 cores shared, spinning threads cost 10x."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _jpeg(color: str, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG")
    return buf.getvalue()


def make_emb_dir(root: Path, n: int = 600, dim: int = 16, parts: int = 3, seed: int = 0,
                 thumbs: bool = True, model: str | None = None) -> dict[str, np.ndarray]:
    """Write an embedding folder in clip-retrieval's layout; texts sit near their images."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((8, dim)).astype(np.float32)
    labels = np.arange(n) % 8
    img = centers[labels] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    txt = img + 0.2 * rng.standard_normal((n, dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        for modality, arr in (("image", img), ("text", txt)):
            path = layout.emb_path(root, modality, part)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, arr[lo:hi])
        rows = range(lo, hi)
        table = pa.table({"key": [f"{i:09d}" for i in rows],
                          "caption": [f"a {COLORS[labels[i]]} square number {i}" for i in rows],
                          "url": [f"https://example.com/{i}.jpg" for i in rows]})
        layout.metadata_path(root, part).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, layout.metadata_path(root, part))
        if thumbs:
            layout.thumbs_path(root, part).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"thumbnail": [_jpeg(COLORS[labels[i]]) for i in rows]}),
                           layout.thumbs_path(root, part))
    if model:
        (root / layout.EMBED_INFO_FILE).write_text(f'{{"model": "{model}"}}')
    return {"image": img, "text": txt, "labels": labels}


def load_clip_client():
    """clip-retrieval's own ClipClient module, loaded from its installed file.

    `import clip_retrieval.clip_client` would run the package __init__, which imports the whole back
    end (flask, torch models, wandb...). The client module itself needs only `requests`, so load that
    one file as it ships: the code under test is ClipClient's, unchanged.
    """
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "clip_client.py"
    mod_spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def jpeg_bytes(color: str, size: tuple[int, int] = (40, 32), seed: int | None = None) -> bytes:
    """A solid-color JPEG; with `seed`, a noisy patch makes each image (and its embedding) distinct."""
    img = Image.new("RGB", size, color)
    if seed is not None:
        noise = np.random.default_rng(seed).integers(0, 256, (size[1] // 2, size[0] // 2, 3), np.uint8)
        img.paste(Image.fromarray(noise), (seed % (size[0] // 2), 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def write_color_shards(root: Path, shards: int = 2, per_shard: int = 12, broken: bool = True) -> list[str]:
    """Real shards of solid-color JPEGs captioned by color; with `broken`, one undecodable image."""
    from clipstack.data.shards import Sample, write_shard

    keys = []
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            color = COLORS[(s * per_shard + i) % len(COLORS)]
            key = f"{s:05d}{i:04d}"
            samples.append(Sample(key, jpeg_bytes(color, seed=s * per_shard + i), [f"a photo of a {color} square"],
                                  meta={"url": f"https://example.com/{key}.jpg"}))
            keys.append(key)
        if broken and s == 0:
            samples[3] = Sample(samples[3].key, b"not an image", ["broken"], meta={})
            keys.remove(samples[3].key)
        write_shard(root, s, samples)
    return keys


def build_model_index(root: Path, shards: int = 2, per_shard: int = 12) -> dict[str, Path]:
    """A saved tiny model, real shards, `clipstack embed` and `clipstack index` over them."""
    from clipstack import models
    from clipstack.search.embed import embed
    from clipstack.search.index import build_index

    model_dir = root / "model"
    models.save_pretrained(models.create_model("clip-tiny"), model_dir)
    write_color_shards(root / "shards", shards, per_shard)
    embed(str(model_dir), str(root / "shards"), root / "emb", batch_size=16)
    build_index(root / "emb", root / "idx", "256M", num_queries=50)
    return {"model": model_dir, "shards": root / "shards", "emb": root / "emb", "idx": root / "idx"}
