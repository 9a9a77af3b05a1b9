"""Shared file I/O: atomic writes leave the old file on failure; reads fail with one line naming the file."""

from __future__ import annotations

import pytest

from clipstack.errors import DataError
from clipstack.io import atomic_open, ensure_folder, read_json, read_text, write_bytes, write_json


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "state.json"
    write_json(target, {"step": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write('{"step": 2')
        raise RuntimeError("killed mid-write")
    assert read_json(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "no temp file is left behind"


@pytest.mark.parametrize("content, reason", [
    (b'{"a": 1,', "not valid JSON (line 1, column 9"),
    (b"\xff\xfe{}", "not UTF-8 text (byte 0"),
])
def test_read_json_names_the_file_and_the_reason(tmp_path, content, reason):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"config\.json: indices JSON is " + reason.replace("(", r"\(")):
        read_json(path, "indices JSON")


def test_read_text_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: cannot read file \(No such file or directory\)"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a folder, not a file"):
        read_text(tmp_path)
    (tmp_path / "ok.txt").write_text("café\n", encoding="utf-8")
    assert read_text(tmp_path / "ok.txt") == "café\n"


def test_atomic_write_to_a_folder_or_through_a_file_is_one_data_error(tmp_path):
    (tmp_path / "afile").write_text("keep\n")
    (tmp_path / "out.json").mkdir()
    with pytest.raises(DataError, match=r"afile/x\.json: cannot create its folder .*afile \(.*afile is a file, "
                                        r"not a folder\)"):
        write_json(tmp_path / "afile" / "x.json", {})
    with pytest.raises(DataError, match=r"afile/a/b/x\.bin: cannot create its folder .*afile/a/b \(.*afile is a "
                                        r"file, not a folder\)"):
        write_bytes(tmp_path / "afile" / "a" / "b" / "x.bin", b"x")
    with pytest.raises(DataError, match=r"out\.json: is a folder, not a file name to write"):
        write_json(tmp_path / "out.json", {})
    assert (tmp_path / "afile").read_text() == "keep\n" and not any((tmp_path / "out.json").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "out.json"], "no temp file is left behind"


def test_ensure_folder(tmp_path):
    assert ensure_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert ensure_folder(tmp_path / "a") == tmp_path / "a"  # already there: fine
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match=r"f/g: cannot create the plots folder \(.*/f is a file, not a folder\)"):
        ensure_folder(tmp_path / "f" / "g", "the plots folder")
