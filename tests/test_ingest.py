"""Ingest: every source kind, resize modes and formats, HTTP with bounded concurrency, resume, parallelism."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _data_util import ImageServer, jpeg, png
from PIL import Image

from clipstack.cli import main
from clipstack.data.ingest import IngestConfig, ingest
from clipstack.data.resize import Resizer
from clipstack.data.shards import Sample, read_samples, write_shard
from clipstack.data.sources import count_hint
from clipstack.errors import ConfigError, DataError


def _run(src, out, **kw):
    resizer = kw.pop("resizer", Resizer(image_size=32))
    return ingest(src, out, IngestConfig(resizer=resizer, **kw), show_progress=False)


def _size(sample):
    return Image.open(io.BytesIO(sample.image)).size


def test_folder_with_sidecar_txt(tmp_path):
    src = tmp_path / "imgs"
    (src / "sub").mkdir(parents=True)
    (src / "cat.jpg").write_bytes(jpeg((64, 48)))
    (src / "cat.txt").write_text("a cat\n", encoding="utf-8")
    (src / "sub" / "dog.png").write_bytes(png((40, 80)))
    (src / "sub" / "dog.txt").write_text("a dog", encoding="utf-8")
    (src / "nocap.jpg").write_bytes(jpeg())
    (src / "cat.json").write_text(json.dumps({"captions": ["a cat", "a tabby on a mat"], "license": "cc0"}))
    result = _run(src, tmp_path / "out")
    assert (result.total, result.kept, result.dropped) == (3, 2, {"empty_caption": 1}) and count_hint(str(src)) == 3
    samples = {s.key: s for s in read_samples(tmp_path / "out")}
    assert sorted(samples) == ["cat", "sub_dog"]
    assert samples["cat"].captions == ["a cat", "a tabby on a mat"] and samples["cat"].ext == "jpg"
    assert samples["cat"].meta["license"] == "cc0" and samples["sub_dog"].captions == ["a dog"]
    assert _size(samples["cat"]) == (43, 32) and _size(samples["sub_dog"]) == (32, 64)
    ledger = pq.read_table(tmp_path / "out" / "_ledger.parquet").to_pylist()
    assert [r["error_message"] for r in ledger if r["key"] == "nocap"] == ["no caption file nocap.txt"]


def test_jsonl_multi_caption_extra_columns_and_generated_keys(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    lines = [{"image": "a.jpg", "text": "alt text", "rewrites": ["a rewrite", "another"], "likes": 3},
             {"image": str(tmp_path / "a.jpg"), "text": "only alt", "rewrites": [], "likes": None}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    result = _run(tmp_path / "t.jsonl", tmp_path / "out", caption_cols=["text", "rewrites"], shard_size=1)
    assert (result.total, result.kept, result.shards) == (2, 2, 2) and count_hint(str(tmp_path / "t.jsonl")) == 2
    first, second = read_samples(tmp_path / "out")
    assert (first.key, second.key) == ("000000000", "000010000")  # img2dataset: shard + index in shard
    assert first.captions == ["alt text", "a rewrite", "another"] and first.meta["likes"] == 3
    assert second.captions == ["only alt"]
    with __import__("tarfile").open(tmp_path / "out" / "00000.tar") as tar:
        assert tar.extractfile("000000000.txt").read() == b"alt text"  # first caption in .txt, all in JSON


def test_parquet_and_tsv_tables_with_named_columns(tmp_path):
    (tmp_path / "x.png").write_bytes(png())
    pq.write_table(pa.table({"img": ["x.png", "x.png"], "cap": ["one", "two"], "uid": ["u1", "u2"]}),
                   tmp_path / "t.parquet")
    result = _run(tmp_path / "t.parquet", tmp_path / "o1", url_col="img", caption_cols=["cap"], key_col="uid",
                  resizer=Resizer(resize_mode="no", encode_format="png"))
    assert result.kept == 2 and [s.key for s in read_samples(tmp_path / "o1")] == ["u1", "u2"]
    assert next(iter(read_samples(tmp_path / "o1"))).image == png()  # "no" + same format keeps the bytes
    (tmp_path / "t.tsv").write_text("file\tcaption\tlang\nx.png\thello, world\ten\n", encoding="utf-8")
    _run(tmp_path / "t.tsv", tmp_path / "o2")
    (sample,) = read_samples(tmp_path / "o2")
    assert sample.caption == "hello, world" and sample.meta["lang"] == "en" and sample.ext == "jpg"


def test_missing_column_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("path,caption\na.jpg,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="no column 'link' for the image path or URL"):
        _run(tmp_path / "t.csv", tmp_path / "out", url_col="link")
    assert main(["ingest", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "nope: source not found" in capsys.readouterr().err


@pytest.mark.parametrize("mode,expected", [("no", (90, 60)), ("keep_ratio", (48, 32)), ("center_crop", (32, 32)),
                                           ("border", (32, 32))])
def test_resize_modes(tmp_path, mode, expected):
    r = Resizer(image_size=32, resize_mode=mode, encode_format="png")
    out = r(jpeg((90, 60), (0, 0, 250)))
    img = Image.open(io.BytesIO(out.data))
    assert img.size == expected and img.format == "PNG" and (out.original_width, out.original_height) == (90, 60)
    if mode == "border":  # the 32x21 picture sits between black bars
        assert img.getpixel((16, 0)) == (0, 0, 0) and img.getpixel((16, 16))[2] > 200


def test_resize_only_if_bigger_quality_and_webp():
    small = Resizer(image_size=256, resize_only_if_bigger=True)(jpeg((40, 30)))
    assert (small.width, small.height) == (40, 30)
    big = Resizer(image_size=64, encode_quality=95)(jpeg((400, 300)))
    low = Resizer(image_size=64, encode_quality=20)(jpeg((400, 300)))
    assert (big.width, big.height) == (85, 64) and len(low.data) < len(big.data)
    webp = Resizer(image_size=32, encode_format="webp")(png((64, 64)))
    assert Image.open(io.BytesIO(webp.data)).format == "WEBP" and webp.ext == "webp"
    with pytest.raises(ConfigError, match="resize_mode='fit'"):
        Resizer(resize_mode="fit")


def test_http_with_bounded_concurrency_and_delays(tmp_path):
    files = {f"i{i}.jpg": jpeg((50, 40), (i * 20, 0, 0)) for i in range(9)}
    with ImageServer(files) as server:
        rows = "".join(f"{server.url}/delay/0.3/i{i}.jpg,pic {i}\n" for i in range(9))
        (tmp_path / "u.csv").write_text("url,caption\n" + rows, encoding="utf-8")
        result = _run(tmp_path / "u.csv", tmp_path / "out", threads=3, timeout=10)
        assert result.kept == 9 and 2 <= server.max_in_flight <= 3


def test_rerun_skips_finished_shards_and_redoes_missing_ones(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "t.csv").write_text("path,caption\n" + "a.jpg,x\n" * 5 + "missing.jpg,y\n", encoding="utf-8")
    first = _run(tmp_path / "t.csv", tmp_path / "out", shard_size=2)
    assert (first.total, first.kept, first.shards, first.skipped_shards) == (6, 5, 3, 0)
    tar1 = (tmp_path / "out" / "00001.tar").stat().st_mtime_ns
    (tmp_path / "out" / "00002_stats.json").unlink()  # as if killed before shard 2 finished
    second = _run(tmp_path / "t.csv", tmp_path / "out", shard_size=2)
    assert (second.total, second.kept, second.dropped, second.skipped_shards) == (6, 5, {"missing_file": 1}, 2)
    assert (tmp_path / "out" / "00001.tar").stat().st_mtime_ns == tar1
    assert json.loads((tmp_path / "out" / "_stats.json").read_text())["in"] == 6
    with pytest.raises(ConfigError, match="shard_size=2, now 3"):  # resuming with other options would mix jobs
        _run(tmp_path / "t.csv", tmp_path / "out", shard_size=3)


def test_open_clip_webdataset_pipeline_reads_the_output(tmp_path):
    import webdataset as wds

    src = tmp_path / "src"
    write_shard(src, 0, [Sample(f"k{i}", jpeg((90, 60)), [f"caption {i}", "rewrite"]) for i in range(5)]
                + [Sample("noimg", b"", ["no image"], ext="txt")])
    result = _run(src, tmp_path / "out", shard_size=3)
    assert (result.total, result.kept, result.dropped) == (6, 5, {"missing_file": 1})
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    urls = str(tmp_path / "out" / "{00000..00001}.tar")
    pairs = list(wds.WebDataset(urls, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "txt", "json"))
    assert len(pairs) == sum(sizes.values()) == 5
    img, txt, meta = pairs[0]
    assert img.size == (48, 32) and txt == "caption 0" and meta["captions"] == ["caption 0", "rewrite"]


def test_processes_give_the_same_bytes_as_inline(tmp_path):
    src = tmp_path / "src"
    write_shard(src, 0, [Sample(f"k{i}", jpeg((60 + i, 50)), [f"c {i}"]) for i in range(8)])
    a = _run(src, tmp_path / "a", shard_size=3, processes=1)
    b = _run(src, tmp_path / "b", shard_size=3, processes=2)
    assert (a.kept, b.kept, a.shards) == (8, 8, 3)
    for i in range(3):
        assert (tmp_path / "a" / f"{i:05d}.tar").read_bytes() == (tmp_path / "b" / f"{i:05d}.tar").read_bytes()


def test_cli_prints_summary_and_help(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "t.csv").write_text("path,caption\na.jpg,hello\na.jpg,\n", encoding="utf-8")
    assert main(["ingest", str(tmp_path / "t.csv"), str(tmp_path / "out"), "--no-progress"]) == 0
    assert "ingest: in 2 | kept 1 | dropped 1: empty_caption 1 | 1 shards" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    assert "--resize-mode" in capsys.readouterr().out
