"""The query engine behind the server: encode, search and post-filter, batching concurrent queries.

HTTP handlers submit one `Query` each and await its result. A single worker takes whatever queries are
waiting (up to `max_batch`), encodes all their texts in one model call and all their images in another,
runs one FAISS search per (index, modality), then deduplicates and looks up metadata per query. Under
no load a query runs alone at once (no batching delay); under load the model and FAISS see batches.
Compute runs on one worker thread, so the event loop keeps accepting requests meanwhile.

One exception: a vector query (no model to run) on an index whose searches have been measured to take
under `inline_max_s`, arriving while the worker is idle, is answered on the event loop itself. Handing it
to the worker thread and back costs two thread wake-ups, ~0.5 ms on a 2-core VM, more than an IVF search
over 100k rows takes; the loop is blocked only for that sub-millisecond search.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clipstack.search.encoder import Encoder
from clipstack.search.index import SearchIndex

DEDUP_THRESHOLD = 0.94  # clip-retrieval drops a result whose embedding has IP >= this with a kept one
INLINE_MAX_S = 0.001  # answer on the event loop when a search is measured to take less than this


class QueryError(Exception):
    """A request that cannot be answered as asked; `field` names the request field at fault."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


@dataclass
class Query:
    index: str
    modality: str  # which index to search: "image" or "text"
    kind: str  # what the query is: "text", "image" (a PIL image) or "vector"
    payload: Any
    num_results: int
    num_ids: int
    deduplicate: bool = False
    future: asyncio.Future | None = field(default=None, repr=False)


class Engine:
    """Indices and their models, loaded once, and the batching worker."""

    def __init__(self, indices: dict[str, SearchIndex], encoders: dict[str, Encoder | None],
                 max_batch: int = 64, inline_max_s: float = INLINE_MAX_S):
        self.indices = indices
        self.encoders = encoders  # index name -> encoder (shared object when indices share a model)
        self.max_batch = max_batch
        self.inline_max_s = inline_max_s
        self.inline_count = 0
        self._seconds: dict[tuple[str, str], float] = {}  # (index, modality) -> mean seconds per query
        self._busy = False
        # called with (queries, seconds) after each batch, e.g. to fill metrics histograms
        self.on_batch: Callable[[int, float], None] | None = None
        self._queue: asyncio.Queue[Query] | None = None
        self._worker: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipstack-query")

    # ------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------------------------- checks
    def check(self, query: Query) -> None:
        """Raise QueryError naming the field if `query` cannot run on its index."""
        index = self.indices.get(query.index)
        if index is None:
            raise QueryError("indice_name", f"unknown index {query.index!r}; see /indices-list", 404)
        if query.modality not in index.indices:
            raise QueryError("modality", f"index {query.index!r} has no {query.modality} embeddings; "
                             f"available: {sorted(index.indices)}")
        if query.kind in ("text", "image") and self.encoders.get(query.index) is None:
            raise QueryError(query.kind, f"index {query.index!r} has no model to encode a {query.kind} "
                             "query; send embedding_input instead")
        if query.kind == "vector" and len(query.payload) != index.dim:
            raise QueryError("embedding_input", f"has {len(query.payload)} values; index {query.index!r} "
                             f"has dimension {index.dim}")

    async def submit(self, query: Query) -> list[dict[str, Any]]:
        self.check(query)
        assert self._queue is not None, "Engine.start() was not awaited"
        if query.kind == "vector":
            query.payload = unit_vector(query.payload)
        if self._can_inline(query):
            self.inline_count += 1
            result = self._timed([query])[0]
            if isinstance(result, BaseException):
                raise result
            return result
        query.future = asyncio.get_running_loop().create_future()
        await self._queue.put(query)
        return await query.future

    def _can_inline(self, query: Query) -> bool:
        seconds = self._seconds.get((query.index, query.modality))
        return (query.kind == "vector" and not self._busy and self._queue.empty()
                and seconds is not None and seconds < self.inline_max_s)

    def _timed(self, batch: list[Query]) -> list[Any]:
        """run_batch, remembering how long vector-only batches take per (index, modality)."""
        start = time.perf_counter()
        results = self.run_batch(batch)
        seconds = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
        keys = {(q.index, q.modality) for q in batch}
        if len(keys) == 1 and all(q.kind == "vector" for q in batch):
            key, per_query = keys.pop(), seconds / len(batch)
            # per query, since an inline search is one query: a batch formed under load must not close
            # the inline path for good. A moving average, so one search stalled by the OS scheduler does
            # not close it either, while an index whose searches take milliseconds never gets under the bar.
            self._seconds[key] = 0.8 * self._seconds.get(key, per_query) + 0.2 * per_query
        return results

    # ------------------------------------------------------------------------------------- worker
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._busy = True
            try:
                results = await loop.run_in_executor(self._pool, self._timed, batch)
            except Exception as exn:  # noqa: BLE001 - a failed batch fails its queries, not the worker
                results = [exn] * len(batch)
            finally:
                self._busy = False
            for query, result in zip(batch, results):
                if query.future is not None and not query.future.done():
                    if isinstance(result, BaseException):
                        query.future.set_exception(result)
                    else:
                        query.future.set_result(result)

    def run_batch(self, batch: list[Query]) -> list[Any]:
        """Answer queries synchronously: one encode per kind and model, one search per index.
        Queries come from `submit`, which has checked them and made vector payloads unit vectors."""
        import numpy as np

        vectors: list[Any] = [None] * len(batch)
        results: list[Any] = [None] * len(batch)
        for kind in ("text", "image"):
            groups: dict[int, list[int]] = {}
            for i, q in enumerate(batch):
                if q.kind == kind:
                    groups.setdefault(id(self.encoders[q.index]), []).append(i)
            for members in groups.values():
                encoder = self.encoders[batch[members[0]].index]
                inputs = [batch[i].payload for i in members]
                try:
                    out = encoder.encode_texts(inputs) if kind == "text" else encoder.encode_images(inputs)
                except Exception as exn:  # noqa: BLE001
                    for i in members:
                        results[i] = exn
                    continue
                for row, i in enumerate(members):
                    vectors[i] = out[row]
        groups2: dict[tuple[str, str], list[int]] = {}
        for i, q in enumerate(batch):
            if results[i] is None:
                groups2.setdefault((q.index, q.modality), []).append(i)
        for (name, modality), members in groups2.items():
            index = self.indices[name]
            k = min(max(batch[i].num_ids for i in members), index.rows)
            # vector payloads are unit vectors already (submit() made them so), encoder outputs too
            queries = np.array([batch[i].payload if vectors[i] is None else vectors[i] for i in members],
                               dtype=np.float32)
            scores, ids = index.search(modality, queries, k)
            for row, i in enumerate(members):
                results[i] = self._finish(batch[i], index, scores[row], ids[row])
        return results

    def _finish(self, query: Query, index: SearchIndex, scores, ids) -> list[dict[str, Any]]:
        # plain lists from here on: numpy's per-call cost outweighs the work on ten results
        hits = [(i, s) for i, s in zip(ids[: query.num_ids].tolist(), scores[: query.num_ids].tolist())
                if i >= 0]
        if query.deduplicate and len(hits) > 1:
            hits = [hits[j] for j in dedup_order(index.reconstruct(query.modality, [i for i, _ in hits]))]
        hits = hits[: query.num_results]
        rows = index.lookup([i for i, _ in hits])
        return [{**row, "id": i, "similarity": s} for row, (i, s) in zip(rows, hits)]


def unit_vector(values: Any) -> Any:
    """A caller's embedding as a float32 unit vector. Where its squared norm would overflow or vanish
    (values near 1e200 or 1e-200) it is scaled by its largest magnitude first, so any finite nonzero
    vector normalizes; zeros and non-finite values are refused naming the field."""
    import numpy as np

    vec = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # inf or nan here just means: scale first
        squares = float(vec @ vec)
    if 1e-200 < squares < 1e200:  # the usual case: no scaling needed
        return (vec * (1.0 / np.sqrt(squares))).astype(np.float32)
    peak = float(np.abs(vec).max()) if vec.size else 0.0
    if not 0.0 < peak < float("inf"):
        raise QueryError("embedding_input", "is all zeros; it cannot be normalized" if peak == 0.0
                         else "holds values that are not finite numbers")
    vec = vec / peak
    return (vec / np.sqrt(vec @ vec)).astype(np.float32)


def dedup_order(embeddings) -> list[int]:
    """Positions to keep, in rank order: drop any result too similar to a better-ranked kept one."""
    import numpy as np

    emb = np.asarray(embeddings, dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = emb @ emb.T
    kept: list[int] = []
    for i in range(len(emb)):
        if not kept or sims[i, kept].max() < DEDUP_THRESHOLD:
            kept.append(i)
    return kept
