"""Shard writing and reading: img2dataset layout, atomic writes, corrupt tars reported by name."""

import io
import json
import re
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipstack.data.shards import Drop, Sample, iter_shard, read_samples, write_shard, write_sizes
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


def _members(tar_path):
    """(name, header offset, data offset, size) of each member, and where the end-of-archive block starts."""
    with tarfile.open(tar_path) as tf:
        infos = tf.getmembers()
    rows = [(i.name, i.offset, i.offset_data, i.size) for i in infos]
    name, _, data, size = rows[-1]
    return rows, data + -(-size // 512) * 512


def test_every_truncation_is_reported_with_name_and_count_or_reads_whole(tmp_path):
    """Cut a real shard at every byte offset. Policy: the archive is whole once its first end-of-archive
    block (512 zero bytes) is read in full -- a cut after that (second zero block, record padding) yields
    every sample, no error. Any earlier cut -- in a header, in or right after a member's data, exactly at a
    512-byte member boundary (which is byte for byte an archive that lost its later members), in the first
    zero block -- reports `<shard>: unreadable tar after N samples`, N being what was yielded."""
    write_shard(tmp_path, 0, _samples(2))
    data = (tmp_path / "00000.tar").read_bytes()
    whole = {raw["__key__"]: raw for raw in iter_shard(tmp_path / "00000.tar")}
    members, eoa = _members(tmp_path / "00000.tar")
    assert [m[0] for m in members][:3] == ["000000000.jpg", "000000000.json", "000000000.txt"]
    image_ends = [d + size for name, _, d, size in members if name.endswith(".jpg")]
    cut_path = tmp_path / "cut" / "00000.tar"
    cut_path.parent.mkdir()
    kinds = set()
    for cut in range(len(data) + 1):
        cut_path.write_bytes(data[:cut])
        errors = []
        got = list(iter_shard(cut_path, on_error=errors.append))
        for raw in got:  # whatever is yielded was read in full: a prefix of the samples, members intact
            assert {k: v for k, v in raw.items() if k != "__url__"}.items() <= whole[raw["__key__"]].items()
        assert [raw["__key__"] for raw in got] == list(whole)[: len(got)], cut
        if cut >= eoa + 512:
            assert not errors and got == [dict(raw, __url__=str(cut_path)) for raw in whole.values()], cut
            kinds.add("whole")
            continue
        assert len(errors) == 1, f"cut at byte {cut} of {len(data)} read as a whole shard"
        assert re.match(rf"{re.escape(str(cut_path))}: unreadable tar after {len(got)} samples \(", str(errors[0]))
        # a sample is yielded once its image is read in full (the members after it may be lost)
        assert len(got) == sum(end <= cut for end in image_ends), cut
        kinds.add("boundary" if cut % 512 == 0 else "inside")
    assert kinds == {"whole", "boundary", "inside"}
    for cut in (members[3][1], eoa, eoa + 100):  # without on_error: raises, naming the shard
        cut_path.write_bytes(data[:cut])
        with pytest.raises(DataError, match=r"cut/00000.tar: unreadable tar after 1 samples .*truncated"
                           if cut == members[3][1] else r"cut/00000.tar: unreadable tar after 2 samples"):
            list(iter_shard(cut_path))


class _FakeEncoder:
    dim = 2

    def preprocess(self, image):
        return image

    def encode_images(self, images):
        return np.ones((len(images), self.dim), np.float32)

    def encode_texts(self, texts):
        return np.ones((len(texts), self.dim), np.float32)


def test_stages_count_a_shard_cut_at_a_member_boundary(tmp_path):
    """The cut that used to read as a short, whole shard: loader, curate and embed count it, not crash."""
    from clipstack.curate.pipeline import CurateConfig, curate
    from clipstack.data.loader import LoaderSpec, TrainLoader, merge_stats, resolve_sources
    from clipstack.data.transforms import image_transform
    from clipstack.models import get_tokenizer
    from clipstack.search.embed import embed_part

    shards = tmp_path / "shards"
    write_shard(shards, 0, _samples(3))
    members, _ = _members(shards / "00000.tar")
    tar = shards / "00000.tar"
    tar.write_bytes(tar.read_bytes()[: members[6][1]])  # exactly where sample 2's header starts
    write_shard(shards, 1, _samples(2, shard=1))

    spec = LoaderSpec(sources=resolve_sources([("main", str(shards), 1.0)]), batch_size=4, steps=1,
                      transform=image_transform(32, is_train=False), tokenizer=get_tokenizer("clip-tiny"),
                      shuffle_shards=False)
    totals: dict = {}
    for batch in TrainLoader(spec, epoch=0):
        merge_stats(totals, batch["stats"])
    assert totals["counts"]["unreadable_shards"] == 1 and totals["counts"]["kept"] == 4

    stats = curate(shards, tmp_path / "curated", CurateConfig(steps=["text"], min_side=20)).stats
    assert stats["dropped_by_step"]["read"].get("unreadable_shard") == 1
    assert stats["in"] == stats["kept"] + stats["dropped"]

    part = embed_part(_FakeEncoder(), str(tar), tmp_path / "emb", 0, batch_size=4, dtype="float32",
                      thumbnails=False)
    assert part["read"] == part["kept"] == 2 and part["dropped"] == {}
    assert len(part["shard_errors"]) == 1 and "00000.tar: unreadable tar after 2 samples" in part["shard_errors"][0]
