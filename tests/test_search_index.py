"""Index selection, building, tuning and memory-mapped loading, on real FAISS over clustered vectors."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest
from _search_util import faiss_one_thread, make_emb_dir  # noqa: F401 - an autouse fixture

from clipstack.cli import main
from clipstack.errors import ConfigError, DataError
from clipstack.search import layout
from clipstack.search.index import SearchIndex, build_index, recall_at_k
from clipstack.search.select import choose_index, default_nlist, parse_memory
from clipstack.search.store import ArrowStore, write_arrow


def test_parse_memory():
    assert parse_memory("4G") == 4 * 2**30
    assert parse_memory("512m") == 512 * 2**20
    assert parse_memory("1.5GiB") == int(1.5 * 2**30)
    assert parse_memory("1000") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(ConfigError, match="--max-memory"):
            parse_memory(bad)


def test_choose_index_by_size_and_memory():
    assert choose_index(5_000, 512, 2**30).key == "Flat"
    assert choose_index(40_000, 512, 4 * 2**30).key == "HNSW32,Flat"
    assert choose_index(100_000, 512, 4 * 2**30).key == "IVF256,Flat"
    big = choose_index(1_000_000, 512, 4 * 2**30)
    assert big.key == "IVF1024,Flat" and big.tune_param == "nprobe"
    assert choose_index(1_000_000, 512, 1 * 2**30).key == "IVF1024,SQ8"  # raw floats (2 GB) do not fit
    pq = choose_index(1_000_000, 512, 200 * 2**20)
    assert pq.key.startswith("IVF1024,PQ") and pq.estimated_bytes <= 200 * 2**20
    # A small budget pushes even a small collection off Flat.
    assert choose_index(5_000, 512, 2**20).kind == "ivf"
    with pytest.raises(ConfigError, match="too small"):
        choose_index(1_000_000, 512, 2**20)
    assert default_nlist(1_000_000) == 1024 and default_nlist(1000) == 16


def test_recall_at_k_counts_overlap():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), truth) == 1.0
    assert recall_at_k(np.array([[3, 9, -1], [7, 8, 9]]), truth) == pytest.approx(1 / 6)


@pytest.mark.parametrize("thresholds,kind", [({}, "Flat"), ({"flat_threshold": 100}, "HNSW32,Flat"),
                                              ({"flat_threshold": 100, "hnsw_threshold": 100}, "IVF")])
def test_build_each_kind_reaches_recall_and_loads_mmapped(tmp_path, thresholds, kind):
    vec = make_emb_dir(tmp_path / "emb", n=2400, dim=32, parts=3)
    info = build_index(tmp_path / "emb", tmp_path / "idx", "1G", num_queries=200, exact_fallback=False,
                       **thresholds)
    assert json.loads((tmp_path / "idx" / layout.INFO_FILE).read_text()) == json.loads(json.dumps(info))
    for modality in ("image", "text"):
        mod = info["modalities"][modality]
        assert mod["key"].startswith(kind)
        assert mod["rows"] == 2400 and mod["dim"] == 32 and mod["size_bytes"] > 0
        assert mod["recall_at_k"] >= 0.95 and mod["target_reached"]
        assert mod["query_source"] == "other modality"
    index = SearchIndex(tmp_path / "idx")
    assert index.rows == 2400 and index.dim == 32 and sorted(index.indices) == ["image", "text"]
    if kind == "IVF":  # the tuned nprobe is applied on load
        import faiss

        nprobe = info["modalities"]["image"]["search_params"]["nprobe"]
        assert faiss.extract_index_ivf(index.indices["image"]).nprobe == nprobe
    # An indexed vector finds itself first, with its own metadata row.
    scores, ids = index.search("image", vec["image"][[5, 1234]], 3)
    assert ids[:, 0].tolist() == [5, 1234] and scores[0, 0] == pytest.approx(1.0, abs=1e-3)
    rows = index.lookup([1234, 5])
    assert rows[0]["key"] == "000001234" and "square number 1234" in rows[0]["caption"]
    assert "thumbnail" not in rows[0] and index.thumbnail(5)[:2] == b"\xff\xd8"
    recon = index.reconstruct("image", [7, 8])
    assert np.allclose(recon, vec["image"][[7, 8]], atol=0.05)


def test_memory_budget_picks_compressed_codes(tmp_path):
    make_emb_dir(tmp_path / "emb", n=3000, dim=32, parts=1, thumbs=False)
    info = build_index(tmp_path / "emb", tmp_path / "idx", "80K", flat_threshold=10, hnsw_threshold=10,
                       num_queries=100, target_recall=0.8, exact_fallback=False)
    mod = info["modalities"]["image"]
    assert "SQ8" in mod["key"] or "PQ" in mod["key"]
    assert mod["plan"]["estimated_bytes"] <= 80 * 1024
    assert not (tmp_path / "idx" / layout.THUMBS_FILE).exists()
    assert SearchIndex(tmp_path / "idx").thumbnail(0) is None


def test_bad_embedding_folders_are_named(tmp_path):
    with pytest.raises(DataError, match="no metadata/ folder"):
        build_index(tmp_path, tmp_path / "idx")
    make_emb_dir(tmp_path / "emb", n=90, dim=8, parts=3)
    np.save(layout.emb_path(tmp_path / "emb", "image", 1), np.zeros((5, 8), np.float32))
    with pytest.raises(DataError, match=r"img_emb_1.npy: shape \(5, 8\) does not match 30"):
        build_index(tmp_path / "emb", tmp_path / "idx")
    bad = np.ones((30, 8), np.float32)
    bad[3, 2] = np.nan
    np.save(layout.emb_path(tmp_path / "emb", "image", 1), bad)
    with pytest.raises(DataError, match="NaN"):
        build_index(tmp_path / "emb", tmp_path / "idx")
    assert main(["index", str(tmp_path / "nope"), str(tmp_path / "idx")]) == 2


def test_cli_index_prints_summary(tmp_path, capsys):
    make_emb_dir(tmp_path / "emb", n=300, dim=8, parts=2)
    assert main(["index", str(tmp_path / "emb"), str(tmp_path / "idx"), "--max-memory", "64M"]) == 0
    out = capsys.readouterr().out
    assert "image: Flat over 300 rows, recall@10=1.000" in out and "index_info.json" in out


def test_metadata_lookup_is_fast_at_a_million_rows(tmp_path):
    n = 1_000_000
    import pyarrow.compute as pc

    numbers = pc.cast(pa.array(np.arange(n)), pa.string())
    table = pa.table({"key": pc.utf8_lpad(numbers, 9, "0"),
                      "caption": pc.binary_join_element_wise("caption ", numbers, "")})
    write_arrow(tmp_path / "m.arrow", [table.slice(0, 400_000), table.slice(400_000)])
    store = ArrowStore(tmp_path / "m.arrow")
    assert len(store) == n
    ids = np.random.default_rng(0).integers(0, n, size=(200, 40))
    start = time.perf_counter()
    for batch in ids:
        rows = store.take(batch.tolist())
    per_query = (time.perf_counter() - start) / len(ids)
    assert rows[0]["key"] == f"{ids[-1, 0]:09d}" and rows[-1]["caption"] == f"caption {ids[-1, -1]}"
    assert per_query < 0.01, f"40-row lookup took {per_query * 1000:.2f} ms at 1M rows"


def test_unreachable_recall_falls_back_to_exact(tmp_path):
    make_emb_dir(tmp_path / "emb", n=1500, dim=16, parts=1, thumbs=False)
    info = build_index(tmp_path / "emb", tmp_path / "idx", "1G", flat_threshold=10, hnsw_threshold=10,
                       num_queries=50, target_recall=1.01)
    mod = info["modalities"]["image"]
    assert mod["key"] == "Flat" and mod["recall_at_k"] == 1.0 and not mod["target_reached"]
    assert "IVF" in mod["plan"]["reason"] and "exact search fits" in mod["plan"]["reason"]
    values = [t["value"] for t in mod["tuning"]]  # the IVF curve it tried is kept
    assert values == sorted(values) and values[0] == 1 and mod["tuning"][-1]["recall"] == 1.0
