"""The main job end to end on a shortened run: it learns, reports, reproduces, refuses and resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipstack.cli import main
from clipstack.quickstart import QuickstartSettings, run_quickstart

# A shortened run: small pool and eval sets, 150 steps. The full default run is in the README.
SHORT = QuickstartSettings(model="clip-tiny-rn", samples=2000, eval_scale=0.25, steps=150, batch_size=64, lr=2e-3, warmup_steps=10,
                           budget_minutes=10)
SHORT_FLAGS = ["--model", "clip-tiny-rn", "--samples", "2000", "--eval-scale", "0.25", "--steps", "150", "--batch-size", "64",
               "--lr", "0.002", "--warmup-steps", "10", "--budget-minutes", "10"]
STAGES = ["synth", "metadata", "curate", "train", "eval", "embed", "index"]


def _metrics(workdir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text())["metrics"] for p in sorted((workdir / "eval").glob("*.json"))}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("qs") / "run"
    state = run_quickstart(workdir, SHORT, queries=["a red circle", "a blue square"])
    return workdir, state


def test_short_run_learns_far_above_chance(short_run):
    workdir, state = short_run
    assert list(state["done"]) == STAGES
    by_set = {(r["dataset"], r["metric"]): r for r in state["eval"]}
    colors = by_set[("colors", "acc1")]
    assert colors["chance"] == pytest.approx(0.1)
    assert colors["value"] >= 3 * colors["chance"], colors  # the committed floor: 3x chance
    recall = by_set[("retrieval", "image_retrieval_recall@5")]
    assert recall["value"] >= 3 * recall["chance"], recall
    # every embedded set was evaluated, in CLIP_benchmark's format
    sets = json.loads((workdir / "data" / "eval" / "index.json").read_text())
    assert {r["dataset"] for r in state["eval"]} == set(sets)
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    assert summary["stopped"] == "max_steps" and summary["step"] == SHORT.steps


def test_report_is_self_contained_and_lists_the_commands(short_run):
    workdir, state = short_run
    page = (workdir / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 10 and all(s.startswith("data:image/") for s in sources)  # images inlined
    for stage in state["done"].values():
        assert stage["command"].replace("'", "&#x27;") in page
    for title in ("Curation", "Training", "Evaluation", "Search", "Reproduce"):
        assert f"<h2>{title}</h2>" in page
    assert "clipstack serve --indices" in page
    queries = json.loads((workdir / "queries.json").read_text())
    assert [q["query"] for q in queries] == ["a red circle", "a blue square"]
    assert all(len(q["hits"]) == 5 and q["hits"][0]["caption"] for q in queries)


def test_each_stage_runs_alone_with_the_listed_command(short_run, tmp_path):
    workdir, state = short_run
    # The index stage, rerun by hand from the command the report lists, into a new folder.
    argv = state["done"]["index"]["command"].split()[1:]
    argv[-1] = str(tmp_path / "index2")
    assert main(argv) == 0
    assert json.loads((tmp_path / "index2" / "index_info.json").read_text())["modalities"]


def test_rerun_resumes_and_other_settings_are_refused(short_run, capsys):
    workdir, _ = short_run
    before = _metrics(workdir)
    state = run_quickstart(workdir, SHORT, queries=["a red circle"])
    out = capsys.readouterr().out
    assert out.count("finished earlier") == len(STAGES)
    assert _metrics(workdir) == before and state["done"].keys() == set(STAGES)
    code = main(["quickstart", "--workdir", str(workdir), *SHORT_FLAGS[:-2], "--budget-minutes", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "other settings" in err and "budget_minutes" in err


def test_non_quickstart_folder_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["quickstart", "--workdir", str(tmp_path)]) == 2
    assert "not a quickstart run" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_ctrl_c_during_training_then_rerun_gives_the_same_numbers(short_run, tmp_path):
    """SIGINT once training has checkpointed; the rerun resumes it and ends with identical results."""
    reference, _ = short_run
    workdir = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "clipstack", "quickstart", "--workdir", str(workdir), *SHORT_FLAGS,
           "--queries", "a red circle"]
    env = {**os.environ, "CLIPSTACK_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not list((workdir / "run" / "checkpoints").glob("step_*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "training never checkpointed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "rerun the same command to resume" in out
    state = json.loads((workdir / "quickstart.json").read_text())
    assert "train" not in state["done"] and "curate" in state["done"]

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "finished earlier" in done.stdout and "resumed" in done.stdout.lower()
    assert _metrics(workdir) == _metrics(reference)
