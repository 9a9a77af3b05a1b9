"""`clipstack plot` on damaged run folders and bad --out paths: one line naming the file, never a traceback."""

from __future__ import annotations

import json
import math

import pytest

from clipstack.cli import main
from clipstack.train.runlog import MetricsLog

pytest.importorskip("matplotlib")


def _run(tmp_path, extra_lines: list[str] = (), steps: int = 6):
    """A run folder whose metrics.jsonl is written by the trainer's own MetricsLog, plus `extra_lines`."""
    run = tmp_path / "run1"
    run.mkdir()
    log = MetricsLog(run, True, None, False)
    for s in range(1, steps + 1):
        log.write({"step": s, "epoch": 0, "loss": 4.0 / s, "lr": 1e-3 * s, "logit_scale": 14.0 + s,
                   "logit_bias": None, "grad_norm": float("inf") if s == 3 else 1.0})
    log.write({"step": steps, "callback": "zeroshot", "acc1": 0.5})  # a callback record: not a step, not "bad"
    log.close()
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in extra_lines)
    return run


def test_rows_missing_or_with_bad_fields_are_gaps_or_skipped_and_counted(tmp_path, capsys):
    run = _run(tmp_path, [
        json.dumps({"step": "x", "loss": "y"}),            # no numeric step: skipped
        json.dumps({"loss": 1.0}),                          # no step: skipped
        json.dumps({"step": 7, "loss": [1], "lr": {"a": 1}}),  # kept: loss and lr are gaps
        json.dumps({"step": 8, "loss": None, "lr": 1e-2, "logit_scale": 0}),  # null loss (was nan): a gap
        json.dumps([1, 2]),                                 # not an object: skipped
        "garbage",                                          # not JSON: skipped
        "",                                                 # blank: ignored
    ])
    with open(run / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"step": 9, "loss": 1.0}\n\xff\xfe\x00bad\n{"step": 10, "lo')  # not UTF-8, then torn by a kill
    assert main(["plot", str(run)]) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"clipstack: warning: {run / 'metrics.jsonl'}: skipped 6 lines that are not "
                                        "step records (not JSON, not UTF-8, or no numeric step)"]
    assert out.split() == [str(run / "plots" / f"{n}.png") for n in ("loss", "lr", "temperature")]
    assert all((run / "plots" / f"{n}.png").read_bytes().startswith(b"\x89PNG") for n in ("loss", "lr", "temperature"))


def test_plot_values_for_gaps(tmp_path):
    from clipstack.train.plots import _number, read_metrics

    run = _run(tmp_path, [json.dumps({"step": 7, "loss": "high", "lr": True})])
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[2]["grad_norm"] is None  # MetricsLog writes inf as null
    assert math.isnan(_number(rows[-1]["loss"])) and math.isnan(_number(rows[-1]["lr"]))
    assert math.isnan(_number(None)) and _number(2) == 2.0


def test_metrics_jsonl_of_random_bytes_is_one_line_naming_it(tmp_path, capsys):
    run = tmp_path / "run2"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(bytes(range(256)) * 8)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"clipstack: error: {run / 'metrics.jsonl'}: no step records to plot; skipped ")
    assert not (run / "plots").exists()


@pytest.mark.parametrize("out", ["afile", "afile/sub", "run1/metrics.jsonl"])
def test_out_that_is_or_runs_through_a_file_is_one_line(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    run = _run(tmp_path)
    (tmp_path / "afile").write_text("hi\n")
    before = (run / "metrics.jsonl").read_bytes()
    assert main(["plot", "run1", "--out", out]) == 2
    blocker = "run1/metrics.jsonl" if out.startswith("run1") else "afile"
    assert capsys.readouterr().err == (f"clipstack: error: {out}: cannot create the plots folder "
                                       f"({blocker} is a file, not a folder)\n")
    assert (run / "metrics.jsonl").read_bytes() == before and (tmp_path / "afile").read_text() == "hi\n"


def test_out_folder_holding_a_folder_named_like_a_plot(tmp_path, capsys):
    run = _run(tmp_path)
    (tmp_path / "plots" / "lr.png").mkdir(parents=True)
    assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 2
    assert capsys.readouterr().err == (f"clipstack: error: {tmp_path / 'plots' / 'lr.png'}: is a folder, "
                                       "not a file name to write\n")
