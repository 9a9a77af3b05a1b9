"""`clipstack eval-table` on bad result files and bad --out paths: one line naming the file and the field."""

from __future__ import annotations

import json

import pytest

from clipstack.cli import main

GOOD = {"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_classification",
        "metrics": {"acc1": 0.5, "acc5": None, "mean_per_class_recall": 0.25}, "language": "en"}


def _write(path, obj) -> str:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("out, message", [
    ("afile/x.csv", "afile/x.csv: cannot create its folder afile (afile is a file, not a folder)"),
    ("afile/sub/x.md", "afile/sub/x.md: cannot create its folder afile/sub (afile is a file, not a folder)"),
    ("dcsv.csv", "dcsv.csv: is a folder, not a file name to write"),
])
def test_out_path_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    good = _write(tmp_path / "good.json", GOOD)
    (tmp_path / "afile").write_text("hi\n")
    (tmp_path / "dcsv.csv").mkdir()
    assert main(["eval-table", good, "--out", out]) == 2
    assert capsys.readouterr().err == f"clipstack: error: {message}\n"
    assert (tmp_path / "afile").read_text() == "hi\n" and not any((tmp_path / "dcsv.csv").iterdir())


def test_result_file_that_is_not_utf8_names_it(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_bytes(b"\xff\xfe{}")
    assert main(["eval-table", str(bad), "--out", str(tmp_path / "t.csv")]) == 2
    assert capsys.readouterr().err == f"clipstack: error: {bad}: result file is not UTF-8 text (byte 0: invalid start byte)\n"
    assert not (tmp_path / "t.csv").exists()


def test_wrong_types_name_the_file_and_every_bad_field(tmp_path, capsys):
    bad = _write(tmp_path / "bad.json", {"dataset": ["a"], "model": {"x": 1}, "pretrained": None, "language": 5,
                                         "task": 7, "metrics": [1, 2]})
    good = _write(tmp_path / "good.json", GOOD)
    assert main(["eval-table", good, bad, "--out", str(tmp_path / "t.csv")]) == 2
    assert capsys.readouterr().err == (
        f"clipstack: error: {bad}: not a CLIP_benchmark result (dataset is a list, not a string; model is an "
        "object, not a string; task is a number, not a string; language is a number, not a string; metrics is "
        "a list, not an object of name: number)\n")
    assert not (tmp_path / "t.csv").exists()


def test_non_number_metrics_are_left_out_with_a_warning_and_null_shows_as_nan(tmp_path, capsys):
    a = _write(tmp_path / "a.json", {**GOOD, "pretrained": None,
                                     "metrics": {"acc1": "high", "acc5": None, "dropped_samples": 3,
                                                 "flag": True, "per_class": [0.1, 0.2]}})
    b = _write(tmp_path / "b.json", {**GOOD, "dataset": "stl10"})
    assert main(["eval-table", a, b, "--out", str(tmp_path / "t.csv")]) == 0
    out, err = capsys.readouterr()
    assert err == (f'clipstack: warning: {a}: metrics that are not numbers left out: acc1="high", flag=true, '
                   "per_class=[0.1, 0.2]\n")
    assert out == f"wrote {tmp_path / 't.csv'} (2 results)\n"
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "dataset,model,pretrained,task,language,acc1,acc5,mean_per_class_recall,dropped_samples",
        "cifar10,ViT-B-32,,zeroshot_classification,en,,nan,,3",
        "stl10,ViT-B-32,openai,zeroshot_classification,en,0.5,nan,0.25,",
    ]
