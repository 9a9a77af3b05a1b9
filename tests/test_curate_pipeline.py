"""Curation on real shards: each filter and dedup step, the ledger invariant, subsets, CLI end to end."""

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from _curate_util import image_bytes, write_pool
from PIL import Image

from clipstack.cli import main
from clipstack.curate.dedup import PhashIndex, caption_key, embedding_duplicates
from clipstack.curate.filters import clip_score_keep, text_reason
from clipstack.curate.pipeline import CurateConfig, curate
from clipstack.curate.uids import in_subset, is_sorted, load_subset, uid_for
from clipstack.data.shards import read_samples
from clipstack.errors import ConfigError, DataError

STEPS = ["text", "basic", "exact", "phash", "caption"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    expected = write_pool(folder)
    return folder, expected


@pytest.fixture(scope="module")
def curated(pool, tmp_path_factory):
    folder, _ = pool
    out = tmp_path_factory.mktemp("out")
    return curate(folder, out, CurateConfig(steps=STEPS, min_side=30)), out


def test_each_filter_and_dedup_drops_its_defect_and_nothing_else(pool, curated):
    _, expected = pool
    result, _ = curated
    got = {result.features.keys[i]: f"{step}:{reason}" for i, (step, reason, _) in result.reason_of.items()}
    assert got == expected
    details = {result.features.keys[i]: d for i, (_, _, d) in result.reason_of.items()}
    assert details["000000109"] == "duplicate_of=000000000"
    assert details["000000110"].startswith("duplicate_of=000000001 hamming=")


def test_ledger_subset_and_shards_agree(pool, curated):
    folder, expected = pool
    result, out = curated
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["in"] == 35 and stats["in"] == stats["kept"] + stats["dropped"]
    assert stats["dropped"] == len(expected)
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    assert len(ledger) == stats["dropped"]
    assert {r["key"] for r in ledger} == set(expected)
    assert all(len(r["uid"]) == 32 and r["step"] and r["reason"] for r in ledger)
    kept = list(read_samples(out / "shards"))
    assert len(kept) == stats["kept"]
    assert not {s.key for s in kept} & set(expected)
    assert all(s.meta["uid"] == uid_for(s.key) for s in kept)
    subset = load_subset(out / "subset.npy")
    assert len(subset) == stats["kept"] and is_sorted(subset, strict=True)
    mask = in_subset([uid_for(s.key) for s in read_samples(folder)], subset)
    assert mask.sum() == stats["kept"]
    manifest = pq.read_table(out / "shards" / "00000.parquet").to_pylist()
    assert sum(r["status"] != "success" for r in manifest) == len(expected)
    assert json.loads((out / "shards" / "sizes.json").read_text()) == {"00000.tar": 12, "00001.tar": 12}


def test_truncated_shard_and_reruns(pool, tmp_path):
    folder, _ = pool
    data = (folder / "00001.tar").read_bytes()
    broken = tmp_path / "in"
    broken.mkdir()
    (broken / "00000.tar").write_bytes((folder / "00000.tar").read_bytes())
    (broken / "00001.tar").write_bytes(data[: len(data) // 2 + 700])  # inside a member: a read error
    result = curate(broken, tmp_path / "out", CurateConfig(steps=["text"], min_side=30))
    stats = result.stats
    assert stats["in"] == stats["kept"] + stats["dropped"]
    assert stats["dropped_by_step"]["read"].get("unreadable_shard") == 1
    # the ledger says why each read failed, and the unreadable shard's row has its own uid
    ledger = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    reads = [r for r in ledger if r["step"] == "read"]
    assert reads and all(r["detail"] for r in reads), reads
    shard_row = next(r for r in reads if r["reason"] == "unreadable_shard")
    assert "00001.tar" in shard_row["detail"] and shard_row["uid"] != "0" * 32
    assert len({r["uid"] for r in ledger}) == len(ledger)


def test_sample_key_not_utf8_is_one_dropped_sample_not_a_broken_shard(tmp_path):
    import io
    import tarfile

    caption = b"a red square on a plain blue background"
    with tarfile.open(tmp_path / "in.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for key in (b"aaa", b"b\xffkey", b"ccc"):
            for ext, data in ((b".jpg", image_bytes(key[0])), (b".txt", caption + b" " + key[:1])):
                info = tarfile.TarInfo((key + ext).decode("utf-8", "surrogateescape"))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    result = curate(tmp_path / "in.tar", tmp_path / "out", CurateConfig(steps=["text"], min_side=30))
    assert (result.stats["in"], result.stats["kept"]) == (3, 2)
    assert result.stats["dropped_by_step"]["read"] == {"non_utf8_key": 1}
    (row,) = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    assert row["key"] == "b\\xffkey" and "is not UTF-8" in row["detail"]


def test_balance_step_in_pipeline(pool, tmp_path):
    folder, _ = pool
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(["cat", "dog", "birds", "sea", "zebra"]))
    cfg = CurateConfig(steps=["text", "balance"], metadata=str(meta), balance_t=2, seed=0, min_side=30)
    a = curate(folder, tmp_path / "a", cfg)
    curate(folder, tmp_path / "b", cfg)
    assert (tmp_path / "a/subset.npy").read_bytes() == (tmp_path / "b/subset.npy").read_bytes()
    assert not (tmp_path / "a/.work").exists()  # the spilled matches are cleaned up
    c = curate(folder, tmp_path / "c", dataclasses.replace(cfg, workers=2, steps=["text", "phash", "balance"]))
    d = curate(folder, tmp_path / "d", dataclasses.replace(cfg, workers=1, steps=["text", "phash", "balance"]))
    for name in ("subset.npy", "ledger.parquet", "shards/00000.tar", "shards/00001.tar"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "d" / name).read_bytes(), name
    assert c.features.phash == d.features.phash and c.features.keys == d.features.keys
    reasons = a.stats["dropped_by_step"]["balance"]
    assert reasons["no_match"] > 0 and reasons["balanced_out"] > 0
    after = a.decisions["balance"].info["counts_after"]
    assert after[4] == 0 and after[2] >= 1  # zebra never matched; the rare "birds" is kept whole


def test_config_errors(pool, tmp_path):
    folder, _ = pool
    with pytest.raises(ConfigError, match="unknown step"):
        curate(folder, tmp_path, CurateConfig(steps=["nope"]))
    with pytest.raises(ConfigError, match="--metadata"):
        curate(folder, tmp_path, CurateConfig(steps=["balance"]))
    with pytest.raises(DataError, match="nope.tar: shard not found"):
        curate(tmp_path / "nope.tar", tmp_path / "o", CurateConfig())
    with pytest.raises(ConfigError, match="--clip-model"):
        curate(folder, tmp_path, CurateConfig(steps=["clip"], clip_fraction=0.5))
    for bad, message in (({"min_side": -3}, "--min-side must be >= 0, got -3"),
                         ({"max_aspect": float("nan")}, "--max-aspect must be >= 1, got nan"),
                         ({"balance_t": float("inf")}, "--t must be a positive number, got inf"),
                         ({"embed_threshold": 1.5}, "--embed-threshold is a cosine similarity")):
        with pytest.raises(ConfigError, match=message):
            curate(folder, tmp_path / "bad", CurateConfig(**bad))
    assert not (tmp_path / "bad").exists()


def test_datacomp_subset_files_load(tmp_path):
    uids = [uid_for(str(i)) for i in range(50)]
    pairs = sorted((int(u[:16], 16), int(u[16:], 16)) for u in uids)
    np.save(tmp_path / "datacomp.npy", np.array(pairs, dtype=np.dtype("u8,u8")))  # DataComp's own dtype
    subset = load_subset(tmp_path / "datacomp.npy")
    assert len(subset) == 50 and is_sorted(subset, strict=True)
    assert in_subset(uids[:3] + [uid_for("x")], subset).tolist() == [True, True, True, False]
    np.save(tmp_path / "unsorted.npy", np.array(pairs[::-1], dtype=np.dtype("u8,u8")))
    with pytest.raises(DataError, match="not sorted"):
        load_subset(tmp_path / "unsorted.npy")


def test_text_patterns():
    for junk in ["IMG_1234", "DSC_0042.jpg", "my holiday.JPEG", "https://x.org/a.png", "untitled", "1234 5678",
                 "", "   "]:
        assert text_reason(junk) is not None, junk
    for fine in ["a photo of a cat", "IMG of the week: a red fox", "東京タワー", "Photo 2 of the bridge"]:
        assert text_reason(fine) is None, fine
    assert text_reason(None) == "non_utf8"
    assert caption_key("A  Cat, sleeping!") == caption_key("a cat sleeping")


@pytest.mark.parametrize("bits,threshold", [(64, 4), (256, 16)])
def test_phash_banded_buckets_equal_all_pairs(bits, threshold):
    rng = np.random.default_rng(0)
    hashes = []
    for _ in range(300):  # clusters of hashes a few bits apart
        h = int.from_bytes(rng.bytes(bits // 8), "big")
        hashes.append(h)
        for _ in range(2):
            flips = rng.choice(bits, size=rng.integers(0, 2 * threshold), replace=False)
            hashes.append(h ^ sum(1 << int(f) for f in flips))
    index = PhashIndex(threshold=threshold, bits=bits)
    got = [index.check(h, str(i)) for i, h in enumerate(hashes)]
    kept: list[int] = []
    for i, h in enumerate(hashes):  # brute force over all kept pairs
        close = [d for d in ((hashes[j] ^ h).bit_count() for j in kept) if d <= threshold]
        assert (got[i] is not None) == bool(close), i
        if got[i] is None:
            kept.append(i)
        else:
            assert got[i][1] == min(close)
    assert 0 < sum(g is not None for g in got) < len(hashes) // 2
    assert index.comparisons < len(hashes) ** 2 / 20


def test_embedding_duplicates_and_clip_keep():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    x[10] = x[3] + 0.01
    x[20] = x[3] - 0.01
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dup = embedding_duplicates(x, 0.99)
    assert dup[10] == 3 and dup[20] == 3 and (dup >= 0).sum() == 2
    scores = np.array([0.3, np.nan, 0.1, 0.5, 0.2])
    assert clip_score_keep(scores, threshold=0.2).tolist() == [True, False, False, True, True]
    assert clip_score_keep(scores, fraction=0.5).tolist() == [True, False, False, True, False]


def test_clip_and_embed_steps_with_a_real_model(pool, tmp_path):
    pytest.importorskip("clipstack.models")
    from clipstack.models import create_model, save_pretrained

    model_dir = tmp_path / "model"
    save_pretrained(create_model("clip-tiny"), model_dir)
    folder, _ = pool
    cfg = CurateConfig(steps=["embed", "clip"], clip_model=str(model_dir), clip_fraction=0.5,
                       embed_threshold=0.999, min_side=30)
    result = curate(folder, tmp_path / "out", cfg)
    feats = result.features
    scores = np.asarray(feats.clip_score)
    readable = np.array([r is None for r in feats.read_reason])
    corrupt = np.array([r == "corrupt_image" for r in feats.read_reason])
    assert np.isfinite(scores[readable]).all() and corrupt.sum() == 1 and np.isnan(scores[corrupt]).all()
    # the exact copy of sample 0 has the same image embedding
    why = {feats.keys[i]: (s, d) for i, (s, _, d) in result.reason_of.items()}
    assert why["000000109"] == ("embed", "duplicate_of=000000000")
    alive = result.stats["sizes_after_step"]["embed"]
    assert result.stats["dropped_by_step"]["clip"]["low_clip_score"] == alive - round(alive * 0.5)
    assert result.stats["in"] == result.stats["kept"] + result.stats["dropped"]


DEFECT_OF_REASON = {"text:empty_caption": "empty_caption", "text:junk_file_name": "short_caption",
                    "text:junk_camera_id": "short_caption", "text:non_utf8": "non_utf8_caption",
                    "basic:few_words": "short_caption", "basic:small_image": "too_small",
                    "basic:aspect_ratio": "clean", "read:corrupt_image": "corrupt_image",
                    "exact:duplicate": "exact_duplicate", "phash:near_duplicate": "near_duplicate",
                    "caption:duplicate": "clean"}


def test_cli_end_to_end(pool, tmp_path, capsys):
    import pyarrow as pa

    folder, expected = pool
    keys = [s.key for s in read_samples(folder, on_error=lambda e: None)] + ["000000108"]
    gt = tmp_path / "ground_truth.parquet"  # labels as `clipstack synth` writes them
    pq.write_table(pa.table({"key": keys, "defect": [DEFECT_OF_REASON.get(expected.get(k), "clean")
                                                     for k in keys]}), gt)
    out = tmp_path / "out"
    meta = tmp_path / "meta.txt"
    meta.write_text("cat\ndog\nbirds\nfruit\nsea\n")
    rc = main(["curate", str(folder), str(out), "--steps", "text,basic,exact,phash,caption,balance",
               "--min-side", "30", "--metadata", str(meta), "--t", "3", "--report", "--ground-truth", str(gt)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "in 35" in text and "Balancing" in text
    assert "| read | 1 | 1.000 | corrupt_image 1/1 (1.00) | 0 | 0 |" in text
    assert "| exact | 1 | 1.000 | exact_duplicate 1/1 (1.00) | 0 | 0 |" in text
    assert "| phash | 2 | 1.000 | exact_duplicate 1/1 (1.00), near_duplicate 1/1 (1.00) | 0 | 0 |" in text
    assert "| text | 4 | 1.000 |" in text and "| all (cascade) |" in text
    for name in ("sizes.png", "entry_counts.png", "top_entries.png", "summary.md"):
        assert (out / "report" / name).stat().st_size > 0
    Image.open(out / "report" / "entry_counts.png").verify()
    assert main(["curate", str(folder), str(tmp_path / "x"), "--steps", "balance"]) == 2
    # a bad --ground-truth is named before curation runs (no output folder is started)
    (tmp_path / "not.parquet").write_text("key,defect\n")
    for bad, why in ((tmp_path / "gone.parquet", "ground-truth file not found"),
                     (tmp_path / "not.parquet", "not a readable parquet file"),
                     (tmp_path / "meta.txt", "not a readable parquet file")):
        capsys.readouterr()
        assert main(["curate", str(folder), str(tmp_path / "y"), "--steps", "text", "--report",
                     "--ground-truth", str(bad)]) == 2
        err = capsys.readouterr().err
        assert f"{bad}: " in err and why in err, err
        assert not (tmp_path / "y").exists()
    pq.write_table(pa.table({"key": ["a"]}), tmp_path / "nodefect.parquet")
    assert main(["curate", str(folder), str(tmp_path / "y"), "--steps", "text", "--report",
                 "--ground-truth", str(tmp_path / "nodefect.parquet")]) == 2
    assert "lacks column(s) defect" in capsys.readouterr().err
    titles = tmp_path / "titles.txt"
    titles.write_text("The Red Cat\nOcean Sunset\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["ice cream on a hot day", "ice cream and cake", "a dog in the park"] * 10))
    rc = main(["metadata", "build", str(tmp_path / "m.json"), "--wordnet", "none", "--corpus", str(corpus),
               str(folder), "--min-count", "5", "--min-pmi", "0.5", "--titles", str(titles)])
    assert rc == 0
    entries = json.loads((tmp_path / "m.json").read_text())
    assert "ice cream" in entries and "The Red Cat" in entries and "dog" in entries
    assert len(entries) == len(set(entries))


def test_image_bytes_util_is_decodable():
    assert Image.open(__import__("io").BytesIO(image_bytes(1))).size == (64, 48)
