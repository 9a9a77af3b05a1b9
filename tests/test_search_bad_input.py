"""Bad input to `clipstack embed`, `index` and `serve`: one clear line naming the file or field, a part
that is damaged is redone rather than skipped, and no rows are silently dropped."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import requests
from _search_util import faiss_one_thread, make_emb_dir, write_color_shards  # noqa: F401 - autouse fixture

from clipstack import models
from clipstack.cli import main
from clipstack.errors import ClipstackError, ConfigError, DataError
from clipstack.search import layout
from clipstack.search.index import SearchIndex, build_index
from clipstack.search.server import ServerConfig, ServerThread, build_engine, create_app, load_indices_json


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipstack: error: ") and err.count("\n") == 1, err
    return err


# --- index over a damaged embedding folder -------------------------------------------------------------

@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb") / "emb"
    make_emb_dir(root, n=60, dim=8, parts=3, model="clip-tiny")
    return root


def _copy(emb, tmp_path):
    return shutil.copytree(emb, tmp_path / "e2")


def test_index_refuses_a_missing_metadata_part(emb, tmp_path, capsys):
    e2 = _copy(emb, tmp_path)
    layout.metadata_path(e2, 1).unlink()  # img_emb_1.npy and text_emb_1.npy are still there
    err = _one_line_error(capsys, ["index", str(e2), str(tmp_path / "idx")])
    assert "metadata_1.parquet is missing" in err and "img_emb_1.npy" in err
    assert not (tmp_path / "idx" / layout.INFO_FILE).exists()


def test_index_refuses_a_missing_embedding_part_or_a_part_never_embedded(emb, tmp_path):
    e2 = _copy(emb, tmp_path)
    layout.emb_path(e2, "text", 2).unlink()
    with pytest.raises(DataError, match=r"text_emb_2\.npy is missing \(beside metadata_2\.parquet\)"):
        build_index(e2, tmp_path / "idx")
    # embed_info.json lists 4 shards but only 3 parts were embedded (a run stopped early)
    e3 = shutil.copytree(emb, tmp_path / "e3")
    (e3 / layout.EMBED_INFO_FILE).write_text(json.dumps({"model": "clip-tiny", "shards": list("abcd")}))
    with pytest.raises(DataError, match=r"metadata_3\.parquet is missing \(of 4 embedded shards\)"):
        build_index(e3, tmp_path / "idx")


@pytest.mark.parametrize("damage,message", [
    (lambda e: layout.emb_path(e, "image", 1).write_bytes(layout.emb_path(e, "image", 1).read_bytes()[:200]),
     r"img_emb_1\.npy: not a readable \.npy array"),
    (lambda e: layout.emb_path(e, "image", 1).write_bytes(b"\x93NUMPY garbage" * 20),
     r"img_emb_1\.npy: not a readable \.npy array"),
    (lambda e: np.save(layout.emb_path(e, "image", 1), np.array([{"a": 1}] * 20), allow_pickle=True),
     r"img_emb_1\.npy: not a readable \.npy array"),
    (lambda e: np.save(layout.emb_path(e, "text", 0), np.zeros((20, 8), np.int64)),
     r"text_emb_0\.npy: dtype int64 is not a float embedding"),
    (lambda e: layout.metadata_path(e, 0).write_bytes(b"PAR1 this is not parquet PAR1"),
     r"metadata_0\.parquet: metadata part is not a readable parquet file"),
    (lambda e: (e / layout.EMBED_INFO_FILE).write_text('{"model": "clip-tiny",'),
     r"embed_info\.json: embedding info is not valid JSON \(line 1"),
    (lambda e: (e / layout.EMBED_INFO_FILE).write_bytes(b'{"model": "\xff"}'),
     r"embed_info\.json: embedding info is not UTF-8"),
    (lambda e: layout.thumbs_path(e, 2).write_bytes(b"garbage"),
     r"thumbs_2\.parquet: thumbnails part is not a readable parquet file"),
])
def test_index_on_damaged_files_names_the_file(emb, tmp_path, capsys, damage, message):
    e2 = _copy(emb, tmp_path)
    damage(e2)
    err = _one_line_error(capsys, ["index", str(e2), str(tmp_path / "idx"), "--queries", "10"])
    assert re.search(message, err), err


# --- serve start-up -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def idx(emb, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "idx"
    build_index(emb, out, "64M", num_queries=10)
    return out


def test_indices_json_bad_entries_and_encodings(tmp_path, idx):
    cases = {'{"a": 5}': r"index 'a' must be a folder path or an object with 'index_dir', not 5",
             '{"a": {"index_dir": 7}}': r"'index_dir' must be a folder path string",
             '{"a": {"index_dir": "x", "model": ["m"]}}': r"'model' must be a model name",
             '["x"]': r"expected a non-empty object", '{"a": ': r"indices JSON is not valid JSON \(line 1"}
    for text, message in cases.items():
        (tmp_path / "i.json").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_indices_json(tmp_path / "i.json")
    (tmp_path / "i.json").write_bytes(b'{"a": "caf\xe9"}')
    with pytest.raises(ConfigError, match=r"i\.json: indices JSON is not UTF-8"):
        load_indices_json(tmp_path / "i.json")


def test_serve_start_up_on_damaged_index_folders(tmp_path, idx, capsys):
    bad = shutil.copytree(idx, tmp_path / "trunc")
    (bad / "image.index").write_bytes((bad / "image.index").read_bytes()[:100])
    with pytest.raises(DataError, match=r"trunc/image\.index: not a readable FAISS index"):
        SearchIndex(bad)
    (tmp_path / "i.json").write_text(json.dumps({"a": str(bad)}))
    err = _one_line_error(capsys, ["serve", "--indices", str(tmp_path / "i.json")])
    assert "image.index: not a readable FAISS index" in err
    missing = shutil.copytree(idx, tmp_path / "missing")
    (missing / "text.index").unlink()
    with pytest.raises(DataError, match=r"text\.index: index file is missing"):
        SearchIndex(missing)
    for text, message in (("{not json", r"index_info\.json: index info is not valid JSON"),
                          ('{"rows": 3}', r"index_info\.json: index info needs 'modalities'"),
                          ('{"modalities": {"audio": {}}}', r"index info needs 'modalities'")):
        garbage = shutil.copytree(idx, tmp_path / f"g{len(text)}")
        (garbage / layout.INFO_FILE).write_text(text)
        with pytest.raises(DataError, match=message):
            SearchIndex(garbage)
    # metadata from another build: ids would point at the wrong rows
    other = tmp_path / "other"
    make_emb_dir(other / "emb", n=30, dim=8, parts=1)
    build_index(other / "emb", other / "idx", num_queries=10)
    mixed = shutil.copytree(idx, tmp_path / "mixed")
    shutil.copy(other / "idx" / layout.METADATA_FILE, mixed / layout.METADATA_FILE)
    with pytest.raises(DataError, match=r"60 vectors but metadata\.arrow has 30 rows"):
        SearchIndex(mixed)
    assert SearchIndex(idx).rows == 60  # the intact folder still opens


def test_malformed_json_body_names_the_body(idx):
    config = ServerConfig(indices={"a": {"index_dir": str(idx)}})
    with ServerThread(create_app(build_engine(config, load_models=False), config)) as url:
        res = requests.post(f"{url}/knn-service", data=b'{"text": "a red', timeout=10)
        body = res.json()
        assert res.status_code == 422 and body["field"] == "body", body
        assert body["error"].startswith("body: not valid JSON") and "at character 9" in body["error"]
        form = requests.post(f"{url}/knn-service", files={"text": ("a", b"red")}, timeout=10)
        assert form.status_code == 422 and form.json()["field"] == "body"
        assert "not valid JSON" in form.json()["error"]
        meta = requests.post(f"{url}/metadata", data=b"[1, 2", timeout=10)
        assert meta.status_code == 422 and meta.json()["field"] == "body"
        # a field error still names the field
        res = requests.post(f"{url}/knn-service", data=json.dumps({"embedding_input": [1.0] * 8,
                                                                   "num_images": "many"}), timeout=10)
        assert res.status_code == 422 and res.json()["field"] == "num_images"


# --- embed --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "clip-tiny"
    models.save_pretrained(models.create_model("clip-tiny"), path)
    return path


def test_embed_resume_redoes_damaged_parts(tmp_path, model_dir, capsys):
    write_color_shards(tmp_path / "shards", shards=3, per_shard=4, broken=False)
    out = tmp_path / "emb"
    args = ["embed", str(model_dir), str(tmp_path / "shards"), str(out), "--batch-size", "8"]
    assert main(args) == 0
    reference = {p: np.load(layout.emb_path(out, "image", p)) for p in range(3)}
    first = {p: layout.metadata_path(out, p).stat().st_mtime_ns for p in range(3)}
    layout.emb_path(out, "image", 1).unlink()
    path2 = layout.emb_path(out, "text", 2)
    path2.write_bytes(path2.read_bytes()[:-40])  # truncated
    capsys.readouterr()
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["parts_skipped"] == 1 and stats["kept"] == 12 and stats["read"] == 12
    assert layout.metadata_path(out, 0).stat().st_mtime_ns == first[0]
    for p in range(3):
        assert np.allclose(np.load(layout.emb_path(out, "image", p)), reference[p], atol=1e-6)
        assert np.load(layout.emb_path(out, "text", p)).shape == reference[p].shape
    # a thumbnail part of the wrong length, and counts missing from embed_info.json: redone too
    layout.thumbs_path(out, 0).write_bytes(b"garbage")
    info = json.loads((out / layout.EMBED_INFO_FILE).read_text())
    del info["parts"]["2"]
    (out / layout.EMBED_INFO_FILE).write_text(json.dumps(info))
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["parts_skipped"] == 1 and stats["kept"] == 12
    assert main(args) == 0  # everything intact now: nothing redone
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["parts_skipped"] == 3
    build_index(out, tmp_path / "idx", num_queries=5)


def test_embed_bad_output_device_and_info(tmp_path, model_dir, capsys):
    write_color_shards(tmp_path / "shards", shards=1, per_shard=2, broken=False)
    (tmp_path / "file").write_text("x")
    err = _one_line_error(capsys, ["embed", str(model_dir), str(tmp_path / "shards"), str(tmp_path / "file")])
    assert "file: output folder is an existing file" in err
    import torch

    if not torch.cuda.is_available():
        err = _one_line_error(capsys, ["embed", str(model_dir), str(tmp_path / "shards"),
                                       str(tmp_path / "o1"), "--device", "cuda:7"])
        assert "--device cuda:7: torch sees no CUDA GPU" in err
    err = _one_line_error(capsys, ["embed", str(model_dir), str(tmp_path / "shards"), str(tmp_path / "o1"),
                                   "--device", "toaster"])
    assert "--device 'toaster': not a torch device" in err
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / layout.EMBED_INFO_FILE).write_text("{garbage")
    err = _one_line_error(capsys, ["embed", str(model_dir), str(tmp_path / "shards"), str(tmp_path / "o2")])
    assert "embed_info.json: embedding info is not valid JSON" in err
    (tmp_path / "o2" / layout.EMBED_INFO_FILE).write_text('{"parts": []}')
    with pytest.raises(ClipstackError, match="embedding info must be an object with a 'parts' object"):
        from clipstack.search.embed import embed

        embed(str(model_dir), str(tmp_path / "shards"), tmp_path / "o2")
