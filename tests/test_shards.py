"""Shard writing and reading: img2dataset layout, atomic writes, corrupt tars reported by name."""

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipstack.data.shards import Drop, Sample, read_samples, write_shard, write_sizes
from clipstack.errors import DataError


def _jpeg(color="red", size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _samples(n, shard=0):
    return [Sample(f"{shard:05d}{i:04d}", _jpeg(), [f"caption {i}", f"rewrite {i}"], meta={"url": f"u{i}"})
            for i in range(n)]


def test_layout_and_roundtrip(tmp_path):
    stats = write_shard(tmp_path, 0, _samples(3), [Drop("000000003", "empty_caption", "caption is empty")])
    assert (stats.count, stats.successes, stats.failed) == (4, 3, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    assert write_sizes(tmp_path) == {"00000.tar": 3}
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 3}
    samples = list(read_samples(tmp_path / "{00000..00000}.tar"))
    assert [s.key for s in samples] == ["000000000", "000000001", "000000002"]
    assert samples[1].captions == ["caption 1", "rewrite 1"] and samples[1].meta["url"] == "u1"
    manifest = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    assert [r["status"] for r in manifest] == ["success"] * 3 + ["empty_caption"]
    stats_json = json.loads((tmp_path / "00000_stats.json").read_text())
    assert stats_json["status_dict"] == {"empty_caption": 1, "success": 3}


def test_same_input_gives_identical_bytes(tmp_path):
    write_shard(tmp_path / "a", 0, _samples(4))
    write_shard(tmp_path / "b", 0, _samples(4))
    assert (tmp_path / "a/00000.tar").read_bytes() == (tmp_path / "b/00000.tar").read_bytes()


def test_truncated_tar_names_shard_and_continues(tmp_path):
    write_shard(tmp_path, 0, _samples(6))
    write_shard(tmp_path, 1, _samples(2, shard=1))
    data = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: len(data) // 2])
    errors = []
    keys = [s.key for s in read_samples([tmp_path / "00000.tar", tmp_path / "00001.tar"], on_error=errors.append)]
    assert len(errors) == 1 and "00000.tar" in str(errors[0]) and "after" in str(errors[0])
    assert keys[-2:] == ["000010000", "000010001"]
    with pytest.raises(DataError, match="00000.tar"):
        list(read_samples(tmp_path / "00000.tar"))


def test_missing_shard_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.tar: shard not found"):
        list(read_samples(tmp_path / "nope.tar"))
