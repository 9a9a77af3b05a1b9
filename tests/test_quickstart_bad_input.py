"""Bad input to `clipstack quickstart`: refused before any stage runs, as one line naming the option.

Each option a stage would refuse (checked by that stage's own validation), a workdir that is a file or
lies under one, a damaged quickstart.json, and a small positive time budget that must stay positive.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clipstack.cli import main
from clipstack.quickstart import QuickstartSettings
from clipstack.quickstart.pipeline import plan

SMALL = ["--samples", "60", "--eval-scale", "0.05", "--steps", "2", "--batch-size", "8"]


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert "[1/" not in captured.out, captured.out  # no stage started
    err = captured.err
    assert err.startswith("clipstack: error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


@pytest.mark.parametrize("flags, message", [
    (["--budget-minutes", "0"], "--budget-minutes: must be a positive number of minutes, got 0.0"),
    (["--budget-minutes", "-1"], "--budget-minutes: must be a positive number of minutes, got -1.0"),
    (["--budget-minutes", "nan"], "--budget-minutes: must be a positive number of minutes, got nan"),
    (["--budget-minutes", "inf"], "--budget-minutes: must be a positive number of minutes, got inf"),
    (["--steps", "0"], "--steps 0: the train stage refuses it (schedule.max_steps: must be >= 1"),
    (["--batch-size", "0"], "--batch-size 0: the train stage refuses it (data.batch_size: must be >= 1"),
    (["--lr", "-1"], "--lr -1.0: the train stage refuses it (optim.lr: must be > 0"),
    (["--lr", "nan"], "--lr nan: the train stage refuses it (optim.lr: expected a finite number"),
    (["--warmup-steps", "-1"], "--warmup-steps -1: the train stage refuses it (schedule.warmup_steps"),
    (["--model", "nonexistent-model"],
     "--model nonexistent-model: the train stage refuses it (model.name: unknown model config"),
    (["--t", "0"], "--t 0: the curate stage refuses it (--t must be a positive number"),
    (["--seed", "-1"], "--seed -1: the synth stage refuses it (seed: must be >= 0"),
    (["--samples", "0"], "--samples 0: the synth stage refuses it (samples: must be in 1.."),
    (["--eval-scale", "nan"], "--eval-scale nan: the synth stage refuses it (eval_scale: must be > 0"),
    (["--eval-scale", "1e9"], "--eval-scale 1000000000.0: the synth stage refuses it (eval_scale"),
])
def test_bad_option_is_refused_before_any_stage(tmp_path, capsys, flags, message):
    workdir = tmp_path / "qs"
    assert main(["quickstart", "--workdir", str(workdir), *SMALL, *flags]) == 2
    assert message in _error(capsys)
    assert not workdir.exists()  # no half-run workdir that only these settings could resume


def test_bad_option_is_refused_in_an_existing_run_too(tmp_path, capsys):
    workdir = tmp_path / "qs"
    workdir.mkdir()
    (workdir / "quickstart.json").write_text('{"settings": {}, "done": {}}')
    assert main(["quickstart", "--workdir", str(workdir), *SMALL, "--lr", "0"]) == 2
    assert "--lr 0.0: the train stage refuses it" in _error(capsys)
    assert sorted(p.name for p in workdir.iterdir()) == ["quickstart.json"]


def test_workdir_that_is_a_file_is_refused(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(["quickstart", "--workdir", str(afile), *SMALL]) == 2
    assert f"--workdir {afile}: is not a folder" in _error(capsys)
    assert main(["quickstart", "--workdir", str(afile / "sub"), *SMALL]) == 2
    assert f"--workdir {afile / 'sub'}: is not a folder ({afile} is a file)" in _error(capsys)
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("content, reason", [
    (b"{garbage", "quickstart state is not valid JSON"),
    (b"[1, 2]", "unreadable quickstart state"),
    (b'{"settings": [1], "done": {}}', "unreadable quickstart state"),
    (b'{"settings": \xff}', "quickstart state is not UTF-8"),
    (None, "quickstart state is a folder, not a file"),
])
def test_damaged_state_file_is_named(tmp_path, capsys, content, reason):
    workdir = tmp_path / "qs"
    state = workdir / "quickstart.json"
    if content is None:
        state.mkdir(parents=True)
    else:
        workdir.mkdir()
        state.write_bytes(content)
    assert main(["quickstart", "--workdir", str(workdir), *SMALL]) == 2
    err = _error(capsys)
    assert str(state) in err and reason in err and "another --workdir" in err


@pytest.mark.parametrize("minutes, seconds", [(0.001, "0.06"), (6.0, "360"), (2.5, "150")])
def test_small_budget_is_not_rounded_to_zero(minutes, seconds):
    argv = next(s.argv for s in plan(Path("w"), QuickstartSettings(budget_minutes=minutes)) if s.name == "train")
    assert argv[argv.index("--schedule.time_budget_s") + 1] == seconds
