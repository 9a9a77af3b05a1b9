"""`clipstack index`: build FAISS indices from an embedding folder, tune them, and load them back.

One index per modality present (`image.index` over image embeddings, `text.index` over caption
embeddings), chosen by `select.choose_index` from size and memory budget, trained on a random sample,
then tuned: the search knob (nprobe / efSearch) is raised until recall@k against exact search on
held-out queries reaches the target. Queries for the image index are caption embeddings and vice versa,
as a user's queries would be. Everything measured goes to `index_info.json`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from clipstack.errors import DataError
from clipstack.io import atomic_path, read_json, write_json
from clipstack.progress import progress
from clipstack.search import layout
from clipstack.search.select import IndexPlan, choose_index, parse_memory
from clipstack.search.store import ArrowStore, write_arrow

ADD_CHUNK = 65536


def load_embeddings(emb_dir: str | os.PathLike, modality: str, parts: list[int], counts: list[int]):
    """Concatenate one modality's parts as float32 rows; None if that modality was not embedded."""
    import numpy as np

    paths = [layout.emb_path(emb_dir, modality, p) for p in parts]
    if not any(p.exists() for p in paths):
        return None
    arrays = []
    for path, count in zip(paths, counts):
        if not path.exists():
            raise DataError(f"{path}: missing while other parts have {modality} embeddings")
        arr = layout.load_npy(path)
        if arr.ndim != 2 or arr.shape[0] != count:
            raise DataError(f"{path}: shape {arr.shape} does not match {count} metadata rows")
        if arr.dtype.kind != "f":
            raise DataError(f"{path}: dtype {arr.dtype} is not a float embedding")
        arrays.append(arr)
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        raise DataError(f"{emb_dir}: {modality} parts have different dimensions {sorted(dims)}")
    out = np.concatenate(arrays).astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out).all(axis=1)).sum())
        raise DataError(f"{emb_dir}: {bad} {modality} embeddings contain NaN or inf")
    return out


def build_faiss(xb, plan: IndexPlan, seed: int = 0, desc: str = "index"):
    """Train `plan` on a random sample of `xb` and add every row (ids = row numbers)."""
    import faiss
    import numpy as np

    index = faiss.index_factory(xb.shape[1], plan.key, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        n_train = min(len(xb), max(50 * (plan.nlist or 1), 20_000))
        rows = np.sort(np.random.default_rng(seed).choice(len(xb), n_train, replace=False))
        index.train(np.ascontiguousarray(xb[rows]))
    bar = progress(total=len(xb), desc=f"adding {desc}", unit="vec")
    for start in range(0, len(xb), ADD_CHUNK):
        chunk = np.ascontiguousarray(xb[start:start + ADD_CHUNK])
        index.add(chunk)
        bar.update(len(chunk))
    bar.close()
    if plan.kind == "ivf":  # reconstruct-by-id (deduplication) needs the id -> list map
        faiss.extract_index_ivf(index).make_direct_map()
    return index


def recall_at_k(found, truth) -> float:
    """Mean fraction of the exact top-k that the approximate top-k contains."""
    k = truth.shape[1]
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / (k * len(truth))


TUNE_MARGIN = 0.01  # tune a little above the target: recall on unseen queries scatters around it


def tune(index, plan: IndexPlan, xq, truth, target: float) -> dict[str, Any]:
    """Smallest nprobe/efSearch reaching `target` (+ margin) recall; the best tried if none does."""
    import faiss

    k = truth.shape[1]
    if plan.tune_param is None:
        start = time.perf_counter()
        _, found = index.search(xq, k)
        recall = recall_at_k(found, truth)
        return {"recall": recall, "params": {}, "query_ms": 1000 * (time.perf_counter() - start) / len(xq),
                "target_reached": recall >= target}
    if plan.tune_param == "nprobe":
        values = [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if v <= plan.nlist]
        values += [plan.nlist] if values[-1] != plan.nlist else []
    else:
        values = [max(k, v) for v in (16, 32, 64, 128, 256, 512, 1024)]
    space, tried = faiss.ParameterSpace(), []
    for value in values:
        space.set_index_parameter(index, plan.tune_param, value)
        start = time.perf_counter()
        _, found = index.search(xq, k)
        ms = 1000 * (time.perf_counter() - start) / len(xq)
        tried.append({"value": value, "recall": recall_at_k(found, truth), "query_ms": ms})
        if tried[-1]["recall"] >= min(1.0, target + TUNE_MARGIN):
            break
    best = tried[-1] if tried[-1]["recall"] >= target else max(tried, key=lambda t: t["recall"])
    space.set_index_parameter(index, plan.tune_param, best["value"])
    return {"recall": best["recall"], "params": {plan.tune_param: best["value"]}, "query_ms": best["query_ms"],
            "target_reached": best["recall"] >= target, "tried": tried}


def single_query_ms(search, xq, num: int = 20) -> float:
    """Median milliseconds of one query per call (the server's case), over up to `num` queries."""
    import numpy as np

    times = []
    for i in range(min(num, len(xq))):
        start = time.perf_counter()
        search(xq[i:i + 1])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def heldout_queries(xb, other, num: int, seed: int):
    """Queries for recall: rows of the other modality if there is one, else rows of `xb` itself."""
    import numpy as np

    source = other if other is not None else xb
    rows = np.sort(np.random.default_rng(seed + 1).choice(len(source), min(num, len(source)), replace=False))
    return np.ascontiguousarray(source[rows], dtype=np.float32), ("other modality" if other is not None
                                                                   else "indexed rows")


def build_one(xb, max_memory: int, *, queries=None, target_recall: float = 0.95, k: int = 10,
              seed: int = 0, desc: str = "index", exact_fallback: bool = True, **plan_kwargs):
    """Plan, build and tune one index over `xb`; returns (faiss index, info dict).

    With `exact_fallback`, an approximate index that misses the recall target, or is no faster than
    exact search at the setting that reaches it, is replaced by Flat when that fits the budget."""
    import faiss

    n, dim = xb.shape
    plan = choose_index(n, dim, max_memory, **plan_kwargs)
    start = time.perf_counter()
    index = build_faiss(xb, plan, seed=seed, desc=desc)
    build_s = time.perf_counter() - start
    k_eff = min(k, n)
    start = time.perf_counter()
    _, truth = faiss.knn(queries, xb, k_eff, metric=faiss.METRIC_INNER_PRODUCT)
    exact_ms = 1000 * (time.perf_counter() - start) / len(queries)
    tuned = tune(index, plan, queries, truth, target_recall)
    single = {"ann": single_query_ms(lambda q: index.search(q, k_eff), queries),
              "exact": single_query_ms(lambda q: faiss.knn(q, xb, k_eff, metric=faiss.METRIC_INNER_PRODUCT),
                                       queries)}
    slower = plan.kind != "flat" and single["ann"] >= single["exact"]  # one query per call, as served
    if exact_fallback and (not tuned["target_reached"] or slower) and plan.kind != "flat" \
            and n * 4 * dim <= max_memory:
        # On structureless data every ANN method degrades to a scan: when no setting reaches the target,
        # or the one that does is no faster than exact search, exact search is better and no slower.
        missed = (f"{plan.key} needed {tuned['params']} for recall@{k_eff} {tuned['recall']:.3f}, no faster "
                  f"than exact ({single['ann']:.3f} vs {single['exact']:.3f} ms/query)" if tuned["target_reached"]
                  else f"{plan.key} reached recall@{k_eff} {tuned['recall']:.3f} < {target_recall} at best")
        plan = IndexPlan("Flat", "flat", None, 4 * dim, n * 4 * dim, None,
                         f"{missed}; exact search fits the budget")
        start = time.perf_counter()
        index = build_faiss(xb, plan, seed=seed, desc=desc)
        build_s += time.perf_counter() - start
        tuned = {**tune(index, plan, queries, truth, target_recall), "tried": tuned.get("tried", [])}
        single["ann"] = single["exact"]
    info = {"key": plan.key, "plan": plan.to_dict(), "rows": n, "dim": dim, "metric": "inner_product",
            "build_seconds": round(build_s, 3), "recall_at_k": round(tuned["recall"], 4), "k": k_eff,
            "target_recall": target_recall, "target_reached": tuned["target_reached"],
            "search_params": tuned["params"], "query_ms_batched": round(tuned["query_ms"], 4),
            "query_ms_single": round(single["ann"], 4), "exact_query_ms_single": round(single["exact"], 4),
            "exact_query_ms_batched": round(exact_ms, 4), "num_queries": len(queries),
            "tuning": tuned.get("tried", [])}
    return index, info


def build_index(emb_dir: str | os.PathLike, index_dir: str | os.PathLike, max_memory: str | int = "4G", *,
                target_recall: float = 0.95, k: int = 10, num_queries: int = 500, seed: int = 0,
                exact_fallback: bool = True, **plan_kwargs) -> dict[str, Any]:
    """Build `index_dir` from `emb_dir`; returns the contents written to index_info.json."""
    import faiss

    budget = parse_memory(max_memory)
    emb_dir, index_dir = Path(emb_dir), Path(index_dir)
    started = time.perf_counter()
    embed_info_path = emb_dir / layout.EMBED_INFO_FILE
    embed_info = read_json(embed_info_path, "embedding info") if embed_info_path.exists() else {}
    if not isinstance(embed_info, dict):
        raise DataError(f"{embed_info_path}: embedding info must be a JSON object")
    shards = embed_info.get("shards")
    parts = layout.check_parts(emb_dir, len(shards) if isinstance(shards, list) else None)
    tables = [layout.read_parquet(layout.metadata_path(emb_dir, p), "metadata part") for p in parts]
    counts = [t.num_rows for t in tables]
    vectors = {m: load_embeddings(emb_dir, m, parts, counts) for m in layout.MODALITY_DIRS}
    vectors = {m: v for m, v in vectors.items() if v is not None}
    if not vectors:
        raise DataError(f"{emb_dir}: no img_emb/ or text_emb/ parts")
    if sum(counts) == 0:
        raise DataError(f"{emb_dir}: the embedding parts hold no rows")
    index_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"rows": sum(counts), "parts": len(parts), "model": embed_info.get("model"),
                            "max_memory": budget, "modalities": {}}
    for modality, xb in vectors.items():
        other = next((v for m, v in vectors.items() if m != modality), None)
        queries, source = heldout_queries(xb, other, num_queries, seed)
        index, mod_info = build_one(xb, budget, queries=queries, target_recall=target_recall, k=k,
                                    seed=seed, desc=modality, exact_fallback=exact_fallback, **plan_kwargs)
        mod_info["query_source"] = source
        path = index_dir / layout.INDEX_FILES[modality]
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
        mod_info["size_bytes"] = path.stat().st_size
        info["modalities"][modality] = mod_info
        del index
    write_arrow(index_dir / layout.METADATA_FILE, tables)
    thumb_parts = [layout.thumbs_path(emb_dir, p) for p in parts]
    if all(p.exists() for p in thumb_parts):
        write_arrow(index_dir / layout.THUMBS_FILE, [layout.read_parquet(p, "thumbnails part", ["thumbnail"])
                                                     for p in thumb_parts])
    info["build_seconds"] = round(time.perf_counter() - started, 3)
    write_json(index_dir / layout.INFO_FILE, info)
    return info


class SearchIndex:
    """A built index folder, opened for queries: FAISS indices memory-mapped, rows in Arrow files."""

    def __init__(self, index_dir: str | os.PathLike, mmap: bool = True):
        import faiss

        self.path = Path(index_dir)
        info_path = self.path / layout.INFO_FILE
        if not info_path.exists():
            raise DataError(f"{self.path}: no {layout.INFO_FILE}; build it with `clipstack index`")
        self.info = read_json(info_path, "index info")
        modalities = self.info.get("modalities") if isinstance(self.info, dict) else None
        if not isinstance(modalities, dict) or not modalities \
                or not all(m in layout.INDEX_FILES and isinstance(v, dict) for m, v in modalities.items()):
            raise DataError(f"{info_path}: index info needs 'modalities', an object of image/text entries; "
                            "rebuild the folder with `clipstack index`")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self.indices = {m: _read_faiss(self.path / layout.INDEX_FILES[m], flags, mod_info.get("search_params"))
                        for m, mod_info in modalities.items()}
        self.metadata = ArrowStore(self.path / layout.METADATA_FILE)
        for modality, index in self.indices.items():
            if index.ntotal != len(self.metadata):  # ids would point at the wrong rows
                raise DataError(f"{self.path / layout.INDEX_FILES[modality]}: {index.ntotal} vectors but "
                                f"{layout.METADATA_FILE} has {len(self.metadata)} rows; rebuild with "
                                "`clipstack index`")
        thumbs = self.path / layout.THUMBS_FILE
        self.thumbs = ArrowStore(thumbs) if thumbs.exists() else None
        self.dim = next(iter(self.indices.values())).d
        self.rows = len(self.metadata)
        self.model = self.info.get("model")
        self._text_columns = [c for c in self.metadata.columns
                              if not _is_binary(self.metadata.table.schema.field(c).type)]

    def search(self, modality: str, queries, k: int):
        """(scores, ids) for float32 rows `queries`; ids are -1 where fewer than k results exist."""
        import numpy as np

        return self.indices[modality].search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def reconstruct(self, modality: str, ids):
        import numpy as np

        return self.indices[modality].reconstruct_batch(np.asarray(ids, dtype=np.int64))

    def lookup(self, ids) -> list[dict[str, Any]]:
        """Metadata rows (text columns only, nulls dropped) for valid row ids."""
        rows = self.metadata.take(list(ids), self._text_columns)
        return [{k: v for k, v in row.items() if v is not None} for row in rows]

    def thumbnail(self, row: int) -> bytes | None:
        if self.thumbs is None or not 0 <= row < len(self.thumbs):
            return None
        return self.thumbs.value(row, "thumbnail")


def _read_faiss(path: Path, flags: int, search_params: Any):
    """A FAISS index file with its tuned search parameters; DataError naming the file if unreadable."""
    import faiss

    if not path.is_file():
        raise DataError(f"{path}: index file is missing; rebuild the folder with `clipstack index`")
    try:
        index = faiss.read_index(str(path), flags)
        space = faiss.ParameterSpace()
        for name, value in (search_params or {}).items():
            space.set_index_parameter(index, name, value)
    except (RuntimeError, TypeError) as exn:  # faiss raises RuntimeError with its C++ message
        reason = str(exn).strip().splitlines()[-1] if str(exn).strip() else type(exn).__name__
        raise DataError(f"{path}: not a readable FAISS index ({reason})") from None
    return index


def _is_binary(dtype) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)
