"""Batched encoding of an evaluation split, and an on-disk cache of the result per model + dataset.

A second task on the same model and data (zero-shot, then linear probe; or a rerun with other templates)
reads the image (and caption) embeddings back instead of re-encoding. The cache key covers the model
(name, checkpoint file stats, or a fingerprint of its weights), the dataset files (sizes, mtimes), the
split and the preprocessing, so a changed input never returns stale embeddings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clipstack.errors import DataError
from clipstack.evaluate.datasets import EvalDataset, EvalSplit
from clipstack.io import atomic_path
from clipstack.progress import progress


@dataclass
class SplitEmbeddings:
    """Normalized image embeddings of one split, with labels or captions (and caption embeddings)."""

    image_emb: torch.Tensor  # [N, D] float32, L2-normalized
    keys: list[str]
    labels: list | None = None  # int per image, or a list of ints (multilabel)
    captions: list[list[str]] | None = None
    text_emb: torch.Tensor | None = None  # [sum(len(c) for c in captions), D], flattened in order
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def texts_image_index(self) -> list[int]:
        return [i for i, caps in enumerate(self.captions or []) for _ in caps]


def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap hash of the weights: shapes plus a strided sample of every tensor's values."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def autocast_context(device: str, precision: str):
    dev = torch.device(device).type
    if precision == "amp" and dev == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "amp_bf16":
        return torch.autocast(dev, dtype=torch.bfloat16)
    return torch.autocast(dev, enabled=False)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: Sequence[str], batch_size: int = 256,
                 device: str = "cpu", precision: str = "fp32", desc: str = "encode texts") -> torch.Tensor:
    """L2-normalized text embeddings [len(texts), D] (float32, on CPU)."""
    out = []
    bar = progress(total=len(texts), desc=desc, unit="text")
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
        with autocast_context(device, precision):
            emb = model.encode_text(tokens)
        out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        bar.update(len(tokens))
    bar.close()
    if not out:
        raise DataError("no texts to encode")
    return torch.cat(out)


def _load_and_preprocess(item, preprocess: Callable):
    try:
        return preprocess(item.load_image())
    except Exception:  # PIL raises many types for a corrupt image; skip and count, never crash
        return None


@torch.no_grad()
def encode_split(model: torch.nn.Module, preprocess: Callable, split: EvalSplit, batch_size: int = 64,
                 device: str = "cpu", precision: str = "fp32", desc: str = "encode images",
                 workers: int = 0) -> SplitEmbeddings:
    """Encode every usable image of `split`; undecodable images are skipped and counted.

    workers > 0 decodes and preprocesses each batch on that many threads (PIL's decoders and resizers
    release the GIL), which keeps a GPU fed; order is preserved either way.
    """
    from concurrent.futures import ThreadPoolExecutor

    embs, keys, labels, captions = [], [], [], []
    dropped_decode = 0
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    pending: list = []

    def flush() -> None:
        nonlocal dropped_decode
        if not pending:
            return
        if pool is not None:
            tensors = list(pool.map(lambda it: _load_and_preprocess(it, preprocess), pending))
        else:
            tensors = [_load_and_preprocess(it, preprocess) for it in pending]
        good = [(it, t) for it, t in zip(pending, tensors) if t is not None]
        dropped_decode += len(pending) - len(good)
        pending.clear()
        if not good:
            return
        x = torch.stack([t for _, t in good]).to(device)
        with autocast_context(device, precision):
            emb = model.encode_image(x)
        embs.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        for it, _ in good:
            keys.append(it.key)
            labels.append(it.label)
            captions.append(it.captions)

    try:
        for item in progress(split, desc=desc, unit="img"):
            pending.append(item)
            if len(pending) >= batch_size:
                flush()
        flush()
    finally:
        if pool is not None:
            pool.shutdown()
    dropped = dict(split.dropped)
    if dropped_decode:
        dropped["undecodable_image"] = dropped_decode
    if not embs:
        raise DataError(f"split {split.name!r}: no usable samples (dropped: {dropped or 'none'})")
    has_caps = captions[0] is not None
    return SplitEmbeddings(torch.cat(embs), keys, None if has_caps else labels,
                           captions if has_caps else None, dropped=dropped)


class EmbedCache:
    """Embeddings on disk under `root/<key>.npz` + `<key>.json`, written atomically."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    @staticmethod
    def key(model_id: str, dataset: EvalDataset, split: str, preprocess: Callable, precision: str = "fp32",
            tokenizer: Callable | None = None) -> str:
        parts = [model_id, dataset.layout, str(dataset.root.resolve()), dataset.fingerprint(), split,
                 repr(preprocess), precision, str(getattr(tokenizer, "context_length", ""))]
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]

    def load(self, key: str) -> SplitEmbeddings | None:
        if self.root is None:
            return None
        npz, meta_path = self.root / f"{key}.npz", self.root / f"{key}.json"
        if not (npz.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            with np.load(npz) as arrays:
                image_emb = torch.from_numpy(arrays["image_emb"].copy())
                text_emb = torch.from_numpy(arrays["text_emb"].copy()) if "text_emb" in arrays else None
        except (OSError, ValueError, KeyError):  # a damaged entry is a miss: encode again and overwrite it
            return None
        return SplitEmbeddings(image_emb, meta["keys"], meta.get("labels"), meta.get("captions"), text_emb,
                               meta.get("dropped", {}))

    def save(self, key: str, emb: SplitEmbeddings) -> None:
        if self.root is None:
            return
        arrays = {"image_emb": emb.image_emb.numpy()}
        if emb.text_emb is not None:
            arrays["text_emb"] = emb.text_emb.numpy()
        with atomic_path(self.root / f"{key}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        meta = {"keys": emb.keys, "labels": emb.labels, "captions": emb.captions, "dropped": emb.dropped}
        with atomic_path(self.root / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(meta), encoding="utf-8")


def split_embeddings(model: torch.nn.Module, preprocess: Callable, tokenizer: Callable | None,
                     dataset: EvalDataset, split: str, *, cache: EmbedCache, model_id: str | None = None,
                     batch_size: int = 64, device: str = "cpu", precision: str = "fp32",
                     workers: int = 0) -> SplitEmbeddings:
    """Image (and, for retrieval sets, caption) embeddings of a split, from the cache when present."""
    key = None
    if cache.root is not None:
        key = cache.key(model_id or model_fingerprint(model), dataset, split, preprocess, precision, tokenizer)
        cached = cache.load(key)
        if cached is not None:
            return cached
    emb = encode_split(model, preprocess, dataset.split(split), batch_size, device, precision,
                       desc=f"{dataset.name}/{split} images", workers=workers)
    if emb.captions is not None:
        if tokenizer is None:
            raise DataError(f"{dataset.root}: retrieval needs a tokenizer")
        flat = [c for caps in emb.captions for c in caps]
        emb.text_emb = encode_texts(model, tokenizer, flat, max(batch_size, 256), device, precision,
                                    desc=f"{dataset.name}/{split} captions")
    if key is not None:
        cache.save(key, emb)
    return emb
