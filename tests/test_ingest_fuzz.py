"""A fuzzed pool through `clipstack ingest`: every bad row is dropped with the right reason, exact counts."""

import csv
import json
import tarfile
from collections import Counter

import pyarrow.parquet as pq
import pytest
from _data_util import ImageServer, jpeg, png, png_bomb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipstack.cli import main
from clipstack.data.ingest import IngestConfig, ingest
from clipstack.data.resize import Resizer
from clipstack.data.shards import Sample, SampleError, open_image, read_samples, write_shard


def _fuzzed_table(tmp_path, server_url):
    """A CSV of 20 rows: 6 good (local and HTTP), 14 bad in every way the ledger knows."""
    d = tmp_path / "files"
    d.mkdir()
    good = jpeg((80, 60))
    files = {
        "good0.jpg": good, "good1.jpg": jpeg((60, 90), (0, 200, 0)), "good2.png": png((50, 50)),
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,  # JPEG magic, garbage body
        "truncated.jpg": good[: len(good) // 2],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20,
        "truncated.png": png((64, 64))[:60],
        "zero.jpg": b"",
        "bomb.png": png_bomb(),
        "tiny.jpg": jpeg((8, 8)),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    rows = [  # (path, caption bytes, key)
        ("files/good0.jpg", b"a red test card", "k00"),
        ("files/good1.jpg", b"a green card", "k01"),
        ("files/good2.png", b"a blue square", "k02"),
        (f"{server_url}/img/remote.jpg", b"a picture served over http", "k03"),
        (f"{server_url}/flaky/remote.jpg", b"served after one retry", "k04"),
        ("files/good0.jpg", "caf\u00e9 cr\u00e8me, \u65e5\u672c".encode(), "k05"),
        ("files/corrupt.jpg", b"corrupt jpeg", "k06"),
        ("files/truncated.jpg", b"truncated jpeg", "k07"),
        ("files/corrupt.png", b"corrupt png", "k08"),
        ("files/truncated.png", b"truncated png", "k09"),
        ("files/zero.jpg", b"zero bytes", "k10"),
        ("files/bomb.png", b"a decompression bomb", "k11"),
        ("files/tiny.jpg", b"too small", "k12"),
        ("files/good0.jpg", b"", "k13"),
        ("files/good0.jpg", b"   \t ", "k14"),
        ("files/good0.jpg", b"bad \xff\xfe bytes", "k15"),
        ("files/does_not_exist.jpg", b"missing path", "k16"),
        ("files/good1.jpg", b"same key again", "k01"),
        (f"{server_url}/status/404", b"not found", "k18"),
        (f"{server_url}/slow/remote.jpg", b"times out", "k19"),
    ]
    with open(tmp_path / "pool.csv", "wb") as fh:
        fh.write(b"path,caption,key,source\n")
        for i, (path, cap, key) in enumerate(rows):
            fh.write(path.encode() + b',"' + cap + b'",' + key.encode() + f",row{i}\n".encode())
    return tmp_path / "pool.csv", {"remote.jpg": jpeg((70, 70), (250, 250, 0))}


EXPECTED = {
    "success": 6, "undecodable_image": 5, "decompression_bomb": 1, "too_small": 1, "empty_caption": 2,
    "non_utf8_caption": 1, "missing_file": 1, "duplicate_key": 1, "http_error": 1, "timeout": 1,
}
EXPECTED_BY_KEY = {"k06": "undecodable_image", "k07": "undecodable_image", "k08": "undecodable_image",
                   "k09": "undecodable_image", "k10": "undecodable_image", "k11": "decompression_bomb",
                   "k12": "too_small", "k13": "empty_caption", "k14": "empty_caption",
                   "k15": "non_utf8_caption", "k16": "missing_file", "k18": "http_error", "k19": "timeout"}


@pytest.fixture
def fuzzed(tmp_path):
    files: dict[str, bytes] = {}
    with ImageServer(files, slow_s=1.5) as server:
        table, served = _fuzzed_table(tmp_path, server.url)
        files.update(served)
        yield table, server


def test_fuzzed_pool_exact_counts_and_reasons(fuzzed, tmp_path, capsys):
    table, server = fuzzed
    out = tmp_path / "out"
    rc = main(["ingest", str(table), str(out), "--key-col", "key", "--min-image-size", "16",
               "--shard-size", "7", "--timeout", "0.5", "--retries", "1", "--threads", "4",
               "--image-size", "32", "--no-progress"])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "in 20 | kept 6 | dropped 14" in summary and "undecodable_image 5" in summary

    stats = json.loads((out / "_stats.json").read_text())
    assert stats["in"] == 20 and stats["kept"] == 6 and stats["dropped"] == 14
    assert stats["in"] == stats["kept"] + sum(stats["dropped_by_reason"].values())
    assert stats["dropped_by_reason"] == {k: v for k, v in EXPECTED.items() if k != "success"}

    ledger = pq.read_table(out / "_ledger.parquet").to_pylist()
    assert Counter(r["status"] for r in ledger) == EXPECTED
    expected_order = [f"k{i:02d}" for i in range(20)]
    expected_order[17] = "k01"
    assert [r["key"] for r in ledger] == expected_order  # one ledger row per input row, in input order
    by_key = {r["key"]: r for r in ledger if r["status"] != "duplicate_key"}
    assert {k: by_key[k]["status"] for k in EXPECTED_BY_KEY} == EXPECTED_BY_KEY
    assert "10000x10000" in by_key["k11"]["error_message"] and "404" in by_key["k18"]["error_message"]
    assert all(r["error_message"] for r in ledger if r["status"] != "success")
    # per-shard stats add up too (count == successes + failed), and sizes.json lists the kept samples
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == 6 and len(sizes) == 3
    for i in range(3):
        s = json.loads((out / f"{i:05d}_stats.json").read_text())
        assert s["count"] == s["successes"] + s["failed"]

    samples = {s.key: s for s in read_samples(out)}
    assert sorted(samples) == ["k00", "k01", "k02", "k03", "k04", "k05"]
    assert samples["k05"].caption == "caf\u00e9 cr\u00e8me, \u65e5\u672c"
    assert samples["k01"].meta["source"] == "row1" and samples["k00"].meta["original_width"] == 80
    assert min(open_image(samples["k02"].image).size) == 32
    assert server.hits["/flaky/remote.jpg"] == 2  # one 503, one retry that worked
    assert server.hits["/status/404"] == 1  # a 404 is not retried


def test_pixel_limit_is_ours_not_pils():
    from PIL import Image

    bomb = png_bomb(20_000, 10_000)  # 200 megapixels: above PIL's own hard limit (2 x 89.5 M)
    with pytest.raises(SampleError) as err:
        open_image(bomb)
    assert err.value.reason == "decompression_bomb" and "exceeds the limit of 89478485" in str(err.value)
    lazy = open_image(bomb, max_pixels=300_000_000, load=False)  # allowed: only the header was read
    assert lazy.size == (20_000, 10_000) and Image.MAX_IMAGE_PIXELS == 89_478_485
    with pytest.raises(SampleError) as err:
        open_image(png_bomb(64, 64))  # a small declared size, but the pixel data is cut short
    assert err.value.reason == "undecodable_image"


def test_truncated_tar_source_keeps_what_was_readable(tmp_path, capsys):
    src = tmp_path / "src"
    write_shard(src, 0, [Sample(f"s{i}", jpeg(), [f"caption {i}"]) for i in range(6)])
    write_shard(src, 1, [Sample("t0", jpeg(), ["caption"]), Sample("t1", jpeg(), [], txt=b"\xff not utf-8"),
                         Sample("t2", jpeg(), ["caption"])])
    with tarfile.open(src / "00000.tar") as tar:
        cut = next(m for m in tar.getmembers() if m.name == "s3.jpg").offset_data + 10
    data = (src / "00000.tar").read_bytes()
    (src / "00000.tar").write_bytes(data[:cut])

    result = ingest(str(src / "{00000..00001}.tar"), tmp_path / "out",
                    IngestConfig(shard_size=100, resizer=Resizer(resize_mode="no")), show_progress=False)
    assert "00000.tar: unreadable tar after 3 samples" in capsys.readouterr().err
    assert (result.total, result.kept, result.dropped) == (6, 5, {"non_utf8_caption": 1})
    kept = {s.key: s for s in read_samples(tmp_path / "out")}
    assert sorted(kept) == ["s0", "s1", "s2", "t0", "t2"]
    assert kept["s0"].image == jpeg() and kept["s0"].meta["source_key"] == "s0"


def test_captions_csv_with_non_utf8_bytes_does_not_break_the_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg())
    (folder / "b.jpg").write_bytes(jpeg())
    with open(folder / "captions.csv", "wb") as fh:
        fh.write(b"file,caption,rewrite\na.jpg,caf\xe9 latin-1,x\nb.jpg,fine caption,a rewrite\n")
    result = ingest(folder, tmp_path / "out", IngestConfig(caption_cols=None), show_progress=False)
    assert (result.total, result.kept, result.dropped) == (2, 1, {"non_utf8_caption": 1})
    with open(folder / "captions.csv", newline="") as fh:  # sanity: the file really is not UTF-8
        with pytest.raises(UnicodeDecodeError):
            list(csv.reader(fh))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["jpg", "png"]), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6))
def test_mutated_images_open_or_fail_with_a_reason(kind, cut, flips):
    """Any truncation / byte flips of a real image: a loaded image, or a SampleError with a ledger reason."""
    data = bytearray(jpeg((48, 40)) if kind == "jpg" else png((48, 40)))
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data = bytes(data[: max(0, int(cut * len(data)))]) if cut < 0.98 else bytes(data)
    try:
        img = open_image(data, max_pixels=10_000_000)
    except SampleError as err:
        assert err.reason in ("undecodable_image", "decompression_bomb") and err.detail
    else:
        assert img.size[0] * img.size[1] <= 10_000_000
