"""Ingest on bad input: every bad row is counted with a reason, bad files give one clear error, resume
never trusts damaged or mismatched outputs. Real files, real tars, real images throughout."""

import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest
from _data_util import jpeg

from clipstack.cli import main
from clipstack.data.ingest import IngestConfig, ingest
from clipstack.data.resize import Resizer
from clipstack.data.shards import Sample, SampleError, iter_shard, read_samples, shard_done, write_shard
from clipstack.errors import ConfigError, DataError


def _run(src, out, **kw):
    resizer = kw.pop("resizer", Resizer(image_size=32))
    return ingest(src, out, IngestConfig(resizer=resizer, **kw), show_progress=False)


def _ledger(out):
    return {r["key"]: r for r in pq.read_table(out / "_ledger.parquet").to_pylist()}


def _stats(out):
    return json.loads((out / "_stats.json").read_text())


def _tar_with_raw_keys(path, keys):
    """A tar whose member names are the given raw bytes keys (+ .jpg/.txt), as a foreign tool may write."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for key in keys:
            for ext, data in ((b".jpg", jpeg()), (b".txt", b"caption of " + key)):
                info = tarfile.TarInfo((key + ext).decode("utf-8", "surrogateescape"))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


# -------------------------------------------------------------------------------- 1: non-UTF-8 names


def test_folder_file_name_not_utf8_is_dropped_and_counted(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for name, data in ((b"bad\xffname.jpg", jpeg()), (b"bad\xffname.txt", b"a caption")):
        with open(os.path.join(os.fsencode(src), name), "wb") as fh:  # pathlib takes no bytes names
            fh.write(data)
    (src / "good.jpg").write_bytes(jpeg())
    (src / "good.txt").write_text("a good caption")
    result = _run(src, tmp_path / "out")
    assert (result.total, result.kept, result.dropped) == (2, 1, {"non_utf8_key": 1})
    ledger = _ledger(tmp_path / "out")
    assert ledger["bad_name"]["status"] == "non_utf8_key"
    assert "bad\\xffname.jpg" in ledger["bad_name"]["error_message"]
    assert [s.key for s in read_samples(tmp_path / "out")] == ["good"]


def test_wds_member_key_not_utf8_is_dropped_by_the_shared_reader(tmp_path):
    _tar_with_raw_keys(tmp_path / "in.tar", [b"aaa", b"b\xffkey", b"ccc"])
    result = _run(str(tmp_path / "in.tar"), tmp_path / "out")
    assert (result.total, result.kept, result.dropped) == (3, 2, {"non_utf8_key": 1})
    ledger = list(_ledger(tmp_path / "out").values())
    assert [r["status"] for r in ledger] == ["success", "non_utf8_key", "success"]  # in input order
    assert "b'b\\xffkey' is not UTF-8" in ledger[1]["error_message"]
    # the reader that curate, embed and the loader share: skipped and reported, the shard goes on
    errors = []
    assert [r["__key__"] for r in iter_shard(tmp_path / "in.tar", on_error=errors.append)] == ["aaa", "ccc"]
    assert len(errors) == 1 and isinstance(errors[0], SampleError) and errors[0].reason == "non_utf8_key"
    with pytest.raises(DataError, match="is not UTF-8"):
        list(iter_shard(tmp_path / "in.tar"))
    assert [s.key for s in read_samples(tmp_path / "in.tar", on_error=lambda e: None)] == ["aaa", "ccc"]


# ------------------------------------------------------------------- 6: broken symlinks, orphan captions


def test_broken_symlink_and_caption_without_image_are_counted(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "good.jpg").write_bytes(jpeg())
    (src / "good.txt").write_text("fine")
    (src / "broken.jpg").symlink_to("/nonexistent/x.jpg")
    (src / "broken.txt").write_text("its image is gone")
    (src / "orphan.txt").write_text("no image was ever here")
    (src / "folder.jpg").mkdir()  # a folder with an image-like name is not an input row
    result = _run(src, tmp_path / "out")
    assert (result.total, result.kept, result.dropped) == (3, 1, {"missing_file": 2})
    ledger = _ledger(tmp_path / "out")
    assert "broken.jpg: no such file" in ledger["broken"]["error_message"]
    assert "orphan.txt: caption file with no image" in ledger["orphan"]["error_message"]
    stats = _stats(tmp_path / "out")
    assert stats["in"] == stats["kept"] + stats["dropped"] == 3


def test_sidecar_json_that_does_not_parse_drops_only_that_image(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for name in ("a", "b"):
        (src / f"{name}.jpg").write_bytes(jpeg())
        (src / f"{name}.txt").write_text(f"caption {name}")
    (src / "a.json").write_text("{not json")
    result = _run(src, tmp_path / "out")
    assert (result.total, result.kept, result.dropped) == (2, 1, {"malformed_row": 1})
    assert "a.json: not valid JSON" in _ledger(tmp_path / "out")["a"]["error_message"]


# ------------------------------------------------------------------------ 7: unreadable input shards


def test_unreadable_input_shards_are_recorded_in_stats_and_summary(tmp_path, capsys):
    src = tmp_path / "src"
    write_shard(src, 0, [Sample(f"s{i}", jpeg(), [f"caption {i}"]) for i in range(6)])
    (src / "00001.tar").write_bytes((src / "00000.tar").read_bytes()[:3000])  # cut inside sample 1
    (src / "00002.tar").write_bytes(b"")
    pattern = str(src / "{00000..00003}.tar")  # 00003.tar does not exist
    assert main(["ingest", pattern, str(tmp_path / "out"), "--image-size", "32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    # 00001.tar is a cut copy of 00000.tar: its one whole sample repeats key s0
    assert "in 7 | kept 6 | dropped 1: duplicate_key 1 | 3 input unreadable | 1 shards" in out
    assert "00001.tar: unreadable tar after 1 samples" in out and "00003.tar: shard not found" in out
    errors = _stats(tmp_path / "out")["source_errors"]
    assert [e.split(":")[0].rsplit("/", 1)[-1] for e in errors] == ["00001.tar", "00002.tar", "00003.tar"]
    assert "empty file" in errors[1]


@pytest.mark.parametrize("content", [None, b"", b"garbage" * 200])
def test_nothing_readable_is_an_error_not_an_empty_success(tmp_path, capsys, content):
    src = tmp_path / "in.tar"
    if content is not None:
        src.write_bytes(content)
    assert main(["ingest", str(src), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "clipstack: error: no input could be read: " in err and "in.tar" in err
    assert _stats(tmp_path / "out")["source_errors"]  # still written, for the record


# ------------------------------------------------------------------------ 5: resume and damaged outputs


def test_resume_redoes_a_truncated_shard(tmp_path):
    src = tmp_path / "src"
    write_shard(src, 0, [Sample(f"s{i}", jpeg(), [f"caption {i}"]) for i in range(6)])
    out = tmp_path / "out"
    _run(str(src / "00000.tar"), out, shard_size=2)
    with open(out / "00001.tar", "r+b") as fh:
        fh.truncate(1000)
    assert not shard_done(out, 1) and shard_done(out, 0)
    again = _run(str(src / "00000.tar"), out, shard_size=2)
    assert (again.total, again.kept, again.skipped_shards) == (6, 6, 2)
    assert [s.key for s in read_samples(out / "00001.tar")] == ["s2", "s3"]


@pytest.mark.parametrize("damage", ["garbage_manifest", "garbage_stats", "stats_count_mismatch"])
def test_resume_redoes_a_shard_whose_manifest_or_stats_are_damaged(tmp_path, damage):
    src = tmp_path / "src"
    write_shard(src, 0, [Sample(f"s{i}", jpeg(), [f"caption {i}"]) for i in range(4)])
    out = tmp_path / "out"
    _run(str(src / "00000.tar"), out, shard_size=2)
    if damage == "garbage_manifest":
        (out / "00001.parquet").write_bytes(b"PAR1garbage")
    elif damage == "garbage_stats":
        (out / "00001_stats.json").write_text("{oops")
    else:
        stats = json.loads((out / "00001_stats.json").read_text())
        (out / "00001_stats.json").write_text(json.dumps({**stats, "successes": 5}))
    again = _run(str(src / "00000.tar"), out, shard_size=2)
    assert (again.total, again.kept, again.skipped_shards) == (4, 4, 1)
    assert json.loads((out / "00001_stats.json").read_text())["successes"] == 2


def test_resume_with_other_image_options_is_refused_naming_the_option(tmp_path):
    src = tmp_path / "src"
    write_shard(src, 0, [Sample("a", jpeg(), ["caption"])])
    _run(str(src / "00000.tar"), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"image_size=32, now 64"):
        _run(str(src / "00000.tar"), tmp_path / "out", resizer=Resizer(image_size=64))
    with pytest.raises(ConfigError, match=r"encode_format='jpg', now 'png'"):
        _run(str(src / "00000.tar"), tmp_path / "out", resizer=Resizer(image_size=32, encode_format="png"))
    again = _run(str(src / "00000.tar"), tmp_path / "out", threads=2, timeout=3)  # work options may change
    assert (again.kept, again.skipped_shards) == (1, 1)


# --------------------------------------------------------------------------------- 4: OUT_DIR problems


def test_out_dir_problems_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "t.csv").write_text("url,caption\na.jpg,hello\n")
    (tmp_path / "afile").write_text("not a folder")
    assert main(["ingest", str(tmp_path / "t.csv"), str(tmp_path / "afile"), "--no-progress"]) == 2
    assert "afile: OUT_DIR exists and is not a folder" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "t.csv"), str(tmp_path / "afile" / "sub"), "--no-progress"]) == 2
    assert "cannot create OUT_DIR" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["ingest", str(tmp_path / "t.csv"), str(out), "--no-progress"]) == 0
    (out / "_ingest_config.json").write_text("garbage")
    assert main(["ingest", str(tmp_path / "t.csv"), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "_ingest_config.json: ingest config of the previous run is not valid JSON" in err
    assert err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------ 8, 2, 3: bad tables


def test_malformed_jsonl_lines_are_dropped_and_counted(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "t.jsonl").write_text('{"url": "a.jpg", "caption": "one"}\n{bad json\n\n[1, 2]\n'
                                      '{"url": "a.jpg", "caption": "two"}\n')
    result = _run(tmp_path / "t.jsonl", tmp_path / "out")
    assert (result.total, result.kept, result.dropped) == (4, 2, {"malformed_row": 2})
    errors = [r["error_message"] for r in _ledger(tmp_path / "out").values() if r["status"] != "success"]
    assert errors[0].endswith("t.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes)")
    assert errors[1].endswith("t.jsonl:4: expected a JSON object per line, got list")
    assert [s.caption for s in read_samples(tmp_path / "out")] == ["one", "two"]
    (tmp_path / "arr.json").write_text('[\n  {"url": "a.jpg", "caption": "x"}\n]\n')
    with pytest.raises(DataError, match="arr.json: a JSON array, not JSON Lines"):
        _run(tmp_path / "arr.json", tmp_path / "out2")


def test_csv_row_with_extra_fields_is_dropped_and_counted(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "t.csv").write_text("url,caption\na.jpg,ok\na.jpg,too,many\na.jpg,fine\n")
    result = _run(tmp_path / "t.csv", tmp_path / "out")
    assert (result.total, result.kept, result.dropped) == (3, 2, {"malformed_row": 1})
    (bad,) = [r for r in _ledger(tmp_path / "out").values() if r["status"] == "malformed_row"]
    assert bad["error_message"].endswith("t.csv:3: 3 fields, the header has 2")


def test_corrupt_parquet_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1garbage")
    assert main(["ingest", str(tmp_path / "bad.parquet"), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.parquet: not a readable parquet file" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- 9: options and locations


@pytest.mark.parametrize("flag,value", [("--timeout", "-1"), ("--timeout", "0"), ("--max-pixels", "0"),
                                        ("--retries", "-1"), ("--min-image-size", "-3")])
def test_out_of_range_options_are_refused_naming_the_option(tmp_path, capsys, flag, value):
    (tmp_path / "t.csv").write_text("url,caption\na.jpg,x\n")
    assert main(["ingest", str(tmp_path / "t.csv"), str(tmp_path / "out"), flag, value, "--no-progress"]) == 2
    assert f"clipstack: error: {flag} " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unsupported_scheme_and_folder_paths_get_their_own_reason(tmp_path):
    (tmp_path / "t.csv").write_text(f"url,caption\nftp://example.org/a.jpg,x\n{tmp_path},a folder\n")
    result = _run(tmp_path / "t.csv", tmp_path / "out")
    assert result.dropped == {"missing_file": 1, "unsupported_url": 1}
    first, second = _ledger(tmp_path / "out").values()
    assert "unsupported URL scheme 'ftp'" in first["error_message"]
    assert second["error_message"] == f"{tmp_path}: is a folder, not an image file"
