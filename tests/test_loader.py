"""The training loader on real tiny shards: splits, determinism, resume position, bad data, sources."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
from _train_util import make_samples, write_shards

from clipstack.data.loader import LoaderSpec, TrainLoader, merge_stats, resolve_sources
from clipstack.data.shards import Sample, write_shard, write_sizes
from clipstack.errors import DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tools():
    from clipstack.data.transforms import image_transform
    from clipstack.models import get_tokenizer

    return image_transform(32, is_train=True), get_tokenizer("clip-tiny")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    write_shards(root, shards=4, per_shard=8)
    return root


def _spec(tools, urls, **kw) -> LoaderSpec:
    transform, tokenizer = tools
    sources = resolve_sources([("main", str(urls), 1.0)]) if not isinstance(urls, list) else resolve_sources(urls)
    return LoaderSpec(sources=sources, batch_size=kw.pop("batch_size", 4), transform=transform,
                      tokenizer=tokenizer, **kw)


def _keys_and_counts(spec: LoaderSpec) -> tuple[list[str], dict]:
    """One epoch's sample keys, in order, and its summed counts."""
    totals: dict = {}
    keys: list[str] = []
    for batch in TrainLoader(spec, epoch=0):
        merge_stats(totals, batch["stats"])
        keys += batch["keys"]
    return keys, totals["counts"]


def test_ranks_and_workers_split_shards_without_overlap(tools, shards):
    seen = []
    for rank in (0, 1):
        spec = _spec(tools, shards, rank=rank, world_size=2, workers=2, shuffle_buffer=4)
        loader = TrainLoader(spec, epoch=0)
        assert len(loader) == 4  # 32 samples / global batch 8
        keys = [k for batch in loader for k in batch["keys"]]
        assert len(keys) == 16
        seen.append(keys)
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 32  # every sample exactly once per epoch


def test_same_seed_same_batches_and_resume_mid_epoch(tools, shards):
    spec = _spec(tools, shards, workers=2, shuffle_buffer=6, seed=3)
    full = list(TrainLoader(spec, epoch=1))
    again = list(TrainLoader(spec, epoch=1, start_step=3))
    assert len(full) == 8 and len(again) == 5
    positions: dict = {}
    for batch in full[:3]:
        positions.update(batch["stats"]["position"])
    assert sorted(positions) == [0, 1]  # one reader per worker
    fast = list(TrainLoader(spec, epoch=1, start_step=3, positions=positions))  # skip without decoding
    for a, b, c in zip(full[3:], again, fast):
        assert a["keys"] == b["keys"] == c["keys"]
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["texts"], b["texts"])
        assert torch.equal(a["images"], c["images"]) and torch.equal(a["texts"], c["texts"])
    other_epoch = [k for b in TrainLoader(spec, epoch=2) for k in b["keys"]]
    assert other_epoch != [k for b in full for k in b["keys"]]
    assert sorted(other_epoch) == sorted(k for b in full for k in b["keys"])


def test_corrupt_samples_and_truncated_tar_are_skipped_and_counted(tools, tmp_path):
    good = make_samples(0, 6)
    bad = Sample(key="broken0001", image=b"not an image at all", captions=["a broken picture"], ext="jpg")
    write_shard(tmp_path, 0, good[:3] + [bad] + good[3:])
    write_shard(tmp_path, 1, make_samples(1, 6))
    tar = tmp_path / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: 3 * 1024 + 100])  # cut mid-way: read what is there, no crash
    with tarfile.open(tmp_path / "00002.tar", "w") as out:  # a sample with a caption but no image
        data = b"an orphan caption"
        info = tarfile.TarInfo("orphan0001.txt")
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    write_sizes(tmp_path)
    spec = _spec(tools, tmp_path, batch_size=2, steps=4, shuffle_buffer=0)
    keys, counts = _keys_and_counts(spec)
    assert "broken0001" not in keys and len(keys) == 8
    assert "orphan0001" not in keys
    assert counts["corrupt"] == 2 and counts["kept"] == 8  # the bad image and the image-less sample
    assert counts["seen"] == counts["kept"] + counts["corrupt"]  # no shuffle buffer: nothing in flight


def test_fewer_shards_than_readers_is_refused_or_resampled(tools, shards):
    spec = _spec(tools, str(shards / "0000{0..1}.tar"), workers=2, world_size=2, steps=2)
    with pytest.raises(DataError, match="2 shard\\(s\\) for 4 readers.*resampled"):
        TrainLoader(spec, epoch=0)
    spec.resampled = True
    batches = list(TrainLoader(spec, epoch=0))
    assert len(batches) == 2 and all(b["images"].shape == (4, 3, 32, 32) for b in batches)


def test_missing_shard_names_its_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope.tar")):
        resolve_sources([("main", str(tmp_path / "nope.tar"), 1.0)])


def test_weighted_sources_and_several_captions(tools, shards, tmp_path):
    write_shard(tmp_path, 0, make_samples(9, 8, captions=3))
    write_sizes(tmp_path)
    spec = _spec(tools, [("a", str(shards), 3.0), ("b", str(tmp_path), 1.0)], resampled=True, steps=20,
                 captions_per_image=2)
    totals: dict = {}
    for batch in TrainLoader(spec, epoch=0):
        assert batch["texts"].shape == (4, 2, 32)
        assert not torch.equal(batch["texts"][:, 0], batch["texts"][:, 1])  # two different captions
        merge_stats(totals, batch["stats"])
    share = totals["per_source"]["a"] / 80
    assert 0.6 < share < 0.9  # weight 3:1 -> 0.75


def test_hard_negative_slot_follows_the_captions(tools, shards):
    from clipstack.data.negatives import WordSwap

    transform, tokenizer = tools
    spec = _spec(tools, shards, steps=8, captions_per_image=1, negatives=WordSwap(["square,circle"]))
    totals: dict = {}
    for batch in TrainLoader(spec, epoch=0):
        assert batch["texts"].shape == (4, 2, 32)
        merge_stats(totals, batch["stats"])
        for caption, negative in batch["texts"].tolist():
            decoded = tokenizer.decode(caption) if hasattr(tokenizer, "decode") else None
            if negative == tokenizer([""])[0].tolist():
                continue  # no "square" in the picked caption: the empty caption stands in
            # Same tokens but one: "square" -> "circle".
            assert sum(a != b for a, b in zip(caption, negative)) == 1, decoded
    counts = totals["counts"]
    assert counts["hard_negative"] + counts["no_hard_negative"] == counts["kept"] == 32
    assert 0 < counts["hard_negative"] < 32  # one of the two captions of each sample names a square


def test_sample_key_not_utf8_is_counted_corrupt_not_an_unreadable_shard(tools, tmp_path):
    samples = make_samples(0, 4)
    with tarfile.open(tmp_path / "00000.tar", "w", format=tarfile.GNU_FORMAT) as out:
        for i, sample in enumerate(samples):
            key = sample.key.encode() if i != 1 else b"bad\xffkey"  # a foreign tool's raw name
            for ext, data in ((b".jpg", sample.image), (b".txt", sample.caption.encode())):
                info = tarfile.TarInfo((key + ext).decode("utf-8", "surrogateescape"))
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    spec = _spec(tools, tmp_path / "00000.tar", batch_size=3, steps=1, shuffle_buffer=0)
    keys, counts = _keys_and_counts(spec)
    assert keys == [samples[0].key, samples[2].key, samples[3].key]
    assert counts["corrupt"] == 1 and counts.get("unreadable_shards", 0) == 0
    assert counts["seen"] == counts["kept"] + counts["corrupt"]
