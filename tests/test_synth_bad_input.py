"""Bad input to `clipstack synth`: one line naming the path or option, and nothing written or lost.

A file where the output folder (or its pool) should be, a damaged synth.json on a rerun, option values
that cannot be generated (too many samples for 5-digit shard numbers, nan, a negative seed, no
workers), and a non-empty folder that no synth run wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipstack.cli import main

SMALL = ["--samples", "30", "--shard-size", "10", "--workers", "1", "--no-eval", "--quiet"]


def _synth(out: Path, *extra: str) -> int:
    return main(["synth", str(out), *SMALL, *extra])


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("clipstack: error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


def test_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert _synth(afile) == 2
    assert f"{afile}: is a file, not a folder" in _error(capsys)
    assert _synth(afile / "sub") == 2
    assert f"{afile} is a file, not a folder" in _error(capsys)
    assert afile.read_text() == "keep me"


def test_pool_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert _synth(out) == 0
    capsys.readouterr()
    for path in (out / "pool").iterdir():
        path.unlink()
    (out / "pool").rmdir()
    (out / "pool").write_text("x")
    assert _synth(out) == 2
    assert f"{out / 'pool'} is a file, not a folder" in _error(capsys)


@pytest.mark.parametrize("content, reason", [
    (b"{garbage", "is not valid JSON"),
    (b"[1, 2]", "must hold a JSON object, got list"),
    (b'{"pool": \xff}', "is not UTF-8"),
    (None, "is a folder, not a file"),
])
def test_damaged_synth_json_on_rerun_is_named(tmp_path, capsys, content, reason):
    out = tmp_path / "out"
    assert _synth(out) == 0
    capsys.readouterr()
    settings = out / "synth.json"
    settings.unlink()
    if content is None:
        settings.mkdir()
    else:
        settings.write_bytes(content)
    assert _synth(out) == 2
    err = _error(capsys)
    assert f"{settings}: synth settings file {reason}" in err and "new output folder" in err
    tar = (out / "pool" / "00000.tar").read_bytes()
    assert _synth(out) == 2 and (out / "pool" / "00000.tar").read_bytes() == tar  # nothing rewritten


@pytest.mark.parametrize("flags, message", [
    (["--samples", "100000000000"], "samples: must be in 1..1000000 (at most 100000 shards of shard_size 10"),
    (["--samples", "0"], "samples: must be in 1..1000000 ("),
    (["--eval-scale", "1e9"], "eval_scale: must be > 0 and <= 100"),
    (["--eval-scale", "nan"], "eval_scale: must be > 0 and <= 100"),
    (["--eval-scale", "0"], "eval_scale: must be > 0 and <= 100"),
    (["--zipf", "nan"], "zipf: exponent must be a finite number >= 0, got nan"),
    (["--zipf", "inf"], "zipf: exponent must be a finite number >= 0, got inf"),
    (["--seed", "-1"], "seed: must be >= 0, got -1"),
    (["--workers", "0"], "workers: must be >= 1, got 0"),
    (["--workers", "-3"], "workers: must be >= 1, got -3"),
])
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    # flags after SMALL win (argparse keeps the last), so --samples/--workers here override it
    assert main(["synth", str(out), *SMALL, *flags]) == 2
    assert message in _error(capsys)
    assert not out.exists()  # no synth.json saying "running", no empty pool


def test_non_empty_folder_that_is_not_a_synth_output_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "pool").mkdir(parents=True)
    (out / "pool" / "foo.tar").write_bytes(b"not ours")
    assert _synth(out) == 2
    assert f"{out}: folder is not empty and holds no synth.json" in _error(capsys)
    assert sorted(p.name for p in out.rglob("*")) == ["foo.tar", "pool"]  # nothing added or removed


def test_empty_folder_and_interrupted_run_are_accepted(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert _synth(out) == 0
    # an interrupted run (synth.json still "running") resumes instead of being refused
    summary = json.loads((out / "synth.json").read_text())
    (out / "synth.json").write_text(json.dumps({**summary, "status": "running"}))
    (out / "pool" / "00002.tar").unlink()
    assert _synth(out) == 0
    assert json.loads((out / "synth.json").read_text())["status"] == "done"
    assert (out / "pool" / "00002.tar").exists()
