"""The query engine: batching on the worker thread, the inline path for fast vector searches, lookups."""

from __future__ import annotations

import asyncio
import datetime
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from _search_util import faiss_one_thread, make_emb_dir  # noqa: F401

from clipstack.search import layout
from clipstack.search.index import SearchIndex, build_index
from clipstack.search.metrics import Histogram
from clipstack.search.server import ServerConfig, ServerThread, build_engine, create_app
from clipstack.search.service import Engine, Query, QueryError
from clipstack.search.store import FEW_ROWS, ArrowStore, scalar_reader


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    vectors = make_emb_dir(root / "emb", n=600, dim=16, thumbs=False)
    # a date and a nullable column, as real metadata parquet files carry them
    for part in layout.list_parts(root / "emb"):
        table = pq.read_table(layout.metadata_path(root / "emb", part))
        rows = [int(key) for key in table["key"].to_pylist()]
        table = table.append_column("taken", pa.array([datetime.date(2020, 1, 1 + i % 28) for i in rows]))
        table = table.append_column("note", pa.array([None if i % 2 else f"n{i}" for i in rows]))
        pq.write_table(table, layout.metadata_path(root / "emb", part))
    build_index(root / "emb", root / "idx", "256M", num_queries=50)
    return root / "idx", vectors


def vector_query(vec, num=5) -> Query:
    return Query(index="i", modality="image", kind="vector", payload=vec.tolist(), num_results=num,
                 num_ids=num)


def run(engine: Engine, queries: list[Query]) -> list:
    async def go():
        await engine.start()
        try:
            return [await engine.submit(q) for q in queries]
        finally:
            await engine.stop()

    return asyncio.run(go())


def test_fast_vector_searches_run_inline_with_the_same_answers(index_dir):
    path, vectors = index_dir
    queries = vectors["image"][:12]
    threaded = Engine({"i": SearchIndex(path)}, {"i": None}, inline_max_s=0.0)
    inline = Engine({"i": SearchIndex(path)}, {"i": None}, inline_max_s=10.0)
    batches: list[tuple[int, float]] = []
    inline.on_batch = lambda size, seconds: batches.append((size, seconds))
    want = run(threaded, [vector_query(v) for v in queries])
    got = run(inline, [vector_query(v) for v in queries])
    assert threaded.inline_count == 0
    # the first query of an index goes to the worker and measures it; the rest are answered inline
    assert inline.inline_count == len(queries) - 1
    assert [size for size, _ in batches] == [1] * len(queries), "inline queries count as batches of one"
    assert all(0 < seconds < 1 for _, seconds in batches)
    assert [[r["id"] for r in rows] for rows in got] == [[r["id"] for r in rows] for rows in want]
    assert got == want
    assert got[0][0]["id"] == 0 and got[0][0]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_inline_only_for_vectors_on_an_idle_worker(index_dir):
    path, vectors = index_dir
    engine = Engine({"i": SearchIndex(path)}, {"i": None}, inline_max_s=10.0)
    run(engine, [vector_query(vectors["image"][0])])  # measures the index
    engine._queue = asyncio.Queue()
    assert engine._can_inline(vector_query(vectors["image"][1]))
    text = Query(index="i", modality="image", kind="text", payload="a red square", num_results=5, num_ids=5)
    assert not engine._can_inline(text), "a query that needs the model must go to the worker"
    engine._busy = True
    assert not engine._can_inline(vector_query(vectors["image"][1])), "a busy worker gets the query queued"
    slow = Engine({"i": SearchIndex(path)}, {"i": None}, inline_max_s=1e-9)
    run(slow, [vector_query(v) for v in vectors["image"][:4]])
    assert slow.inline_count == 0, "an index slower than the bar stays on the worker thread"


def test_lookup_few_and_many_rows_agree(index_dir):
    path, _ = index_dir
    store = ArrowStore(path / layout.METADATA_FILE)
    ids = np.random.default_rng(0).integers(0, len(store), size=3 * FEW_ROWS).tolist()
    many = store.take(ids)
    few = [row for start in range(0, len(ids), FEW_ROWS) for row in store.take(ids[start:start + FEW_ROWS])]
    assert few == many
    assert many[0]["taken"] == datetime.date(2020, 1, 1 + ids[0] % 28)
    assert store.take([1, 0], ["note", "key"]) == [{"note": None, "key": "000000001"},
                                                   {"note": "n0", "key": "000000000"}]
    assert store.take([]) == []


def test_served_results_carry_dates_and_drop_nulls(index_dir):
    path, vectors = index_dir
    config = ServerConfig(indices={"i": {"index_dir": str(path), "model": None}})
    with ServerThread(create_app(build_engine(config), config)) as url:
        for row in (1, 2):  # the first is measured on the worker, the second runs inline
            body = {"embedding_input": vectors["image"][row].tolist(), "num_images": 1, "deduplicate": False}
            res = requests.post(f"{url}/knn-service", data=json.dumps(body), timeout=30)
            assert res.status_code == 200 and res.headers["content-type"] == "application/json"
            top = res.json()[0]
            assert top["id"] == row and top["taken"] == f"2020-01-{1 + row % 28:02d}"
            assert ("note" in top) == (row % 2 == 0)


def test_inline_bar_is_per_query_so_a_batch_under_load_does_not_close_it(index_dir, monkeypatch):
    import time

    path, vectors = index_dir
    engine = Engine({"i": SearchIndex(path)}, {"i": None}, inline_max_s=0.004)
    engine._queue = asyncio.Queue()
    cost = {"per_query": 0.002}

    def slow_batch(batch):
        time.sleep(cost["per_query"] * len(batch))
        return [[] for _ in batch]

    monkeypatch.setattr(engine, "run_batch", slow_batch)
    engine._timed([vector_query(v) for v in vectors["image"][:4]])  # 8 ms for 4 queries: 2 ms each
    assert engine._can_inline(vector_query(vectors["image"][0]))
    cost["per_query"] = 0.02  # an index that takes 20 ms a query closes the path within a few batches
    for _ in range(3):
        engine._timed([vector_query(vectors["image"][0])])
    assert not engine._can_inline(vector_query(vectors["image"][0]))


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_scalar_reader_matches_arrow_on_sliced_unicode_and_null_columns(kind):
    values = ["", "a", "naïve café", "日本語", "x" * 300, "", "end"]
    array = pa.array(values, type=kind)
    for arr, expected in ((array, values), (array.slice(2, 4), values[2:6])):
        read = scalar_reader(arr)
        assert [read(i) for i in range(len(arr))] == expected == arr.to_pylist()
    with_nulls = pa.array(["a", None, "c"], type=kind)
    assert [scalar_reader(with_nulls)(i) for i in range(3)] == ["a", None, "c"]
    numbers = pa.array([1.5, None])
    assert [scalar_reader(numbers)(i) for i in range(2)] == [1.5, None]


def test_histogram_buckets_are_cumulative_with_inclusive_upper_bounds():
    hist = Histogram((1, 2, 4))
    for value in (0.5, 1, 1.5, 2, 3, 9):
        hist.observe(value)
    lines = hist.lines("h")
    assert lines[:4] == ['h_bucket{le="1"} 2', 'h_bucket{le="2"} 4', 'h_bucket{le="4"} 5',
                         'h_bucket{le="+Inf"} 6']
    assert lines[4:] == ["h_sum 17.000000", "h_count 6"]


def test_any_finite_nonzero_vector_normalizes_and_zero_is_refused(index_dir):
    path, vectors = index_dir
    engine = Engine({"i": SearchIndex(path)}, {"i": None})
    target = vectors["image"][3].astype(np.float64)
    # 1e200 and 1e-30 times a stored vector: squares overflow or vanish, the direction is the same
    huge, tiny = vector_query(target * 1e200), vector_query(target * 1e-30)
    got = run(engine, [huge, tiny, vector_query(target)])
    assert [rows[0]["id"] for rows in got] == [3, 3, 3]
    assert all(rows[0]["similarity"] == pytest.approx(1.0, abs=1e-5) for rows in got)
    edge = [1e308, -1e308] + [0.0] * (len(target) - 2)  # finite, whose norm overflows float64
    assert run(engine, [vector_query(np.array(edge))])[0]
    for bad, reason in (([0.0] * len(target), "all zeros"), ([float("inf")] + edge[1:], "not finite")):
        with pytest.raises(QueryError, match=reason) as caught:
            run(engine, [Query(index="i", modality="image", kind="vector", payload=bad, num_results=3,
                               num_ids=3)])
        assert caught.value.field == "embedding_input"
