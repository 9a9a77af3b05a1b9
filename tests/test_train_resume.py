"""Exact resume, for real: runs in subprocesses killed with SIGKILL, then continued with --resume latest.

A kill mid-epoch (after a step, workers running, a shuffle buffer filled, accumulation and two captions
per image on) must end on weights bitwise equal to an uninterrupted run; a kill in the middle of writing
a checkpoint must leave the previous one whole and resumable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _train_util import env, final_state, read_metrics, run_cli, tiny_config, write_config, write_shards

KILL_AT_STEP = """
import json, os, signal, sys
from clipstack.train import train
cfg = json.load(open(sys.argv[1]))
kill_at = int(sys.argv[2])
def killer(ctx):
    if ctx.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
train(cfg, callbacks=[(1, killer)])
"""

KILL_IN_CHECKPOINT_WRITE = """
import io, json, os, signal, sys
import torch
from clipstack.train import train
cfg = json.load(open(sys.argv[1]))
kill_step = int(sys.argv[2])
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == kill_step and hasattr(f, "write"):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half of state.pt is on disk
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
train(cfg)
"""


def _config(root: Path, run: str) -> Path:
    cfg = tiny_config(root / run, str(root / "shards"),
                      data={"workers": 2, "shuffle_buffer": 6, "captions_per_image": 2},
                      optim={"accum_freq": 2},
                      schedule={"epochs": 2, "warmup_steps": 3},
                      checkpoint={"every_steps": 2, "keep_last": 2})
    return write_config(root / f"{run}.json", cfg)


def _script(root: Path, name: str, text: str, *args: str, expect_kill: bool = True) -> None:
    import subprocess

    path = root / f"{name}.py"
    path.write_text(text)
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, env=env(),
                          timeout=120)
    assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_shards(root / "shards", shards=4, per_shard=8, captions=3)  # 32 samples: 4 steps of 8 per epoch
    run_cli("train", "--config", str(_config(root, "ref")))
    return root, final_state(root / "ref"), read_metrics(root / "ref")


def _assert_identical(run: Path, ref_state: dict, ref_metrics: list[dict]) -> None:
    state = final_state(run)
    assert state.keys() == ref_state.keys()
    different = [k for k in state if not torch.equal(state[k], ref_state[k])]
    assert not different, f"not bitwise equal: {different[:5]}"
    got = [(m["step"], m["loss"], m["lr"], m["grad_norm"]) for m in read_metrics(run)]
    assert got == [(m["step"], m["loss"], m["lr"], m["grad_norm"]) for m in ref_metrics]


def test_sigkill_mid_epoch_then_resume_latest_is_bitwise_identical(reference):
    root, ref_state, ref_metrics = reference
    cfg = _config(root, "killed")
    _script(root, "kill_at_step", KILL_AT_STEP, str(cfg), "3")
    steps = [int(p.name.split("_")[1]) for p in (root / "killed" / "checkpoints").glob("step_*")]
    assert max(steps) == 2  # killed after step 3, mid-epoch 0 (4 steps), last checkpoint at 2
    state = torch.load(root / "killed/checkpoints/step_000002/state.pt", weights_only=False)
    assert (state["epoch"], state["step_in_epoch"]) == (0, 2)
    assert state["data_stats"]["counts"]["kept"] == 16
    proc = run_cli("train", "--config", str(cfg), "--resume", "latest")
    assert "trained 8 steps" in proc.stdout
    _assert_identical(root / "killed", ref_state, ref_metrics)
    assert sorted(p.name for p in (root / "killed" / "checkpoints").iterdir()) == ["step_000006", "step_000008"]


def test_kill_during_checkpoint_write_leaves_previous_checkpoint(reference):
    from clipstack.train.checkpoint import resolve_resume

    root, ref_state, ref_metrics = reference
    cfg = _config(root, "torn")
    _script(root, "kill_in_write", KILL_IN_CHECKPOINT_WRITE, str(cfg), "6")  # epoch 1, mid-epoch
    ckpts = root / "torn" / "checkpoints"
    assert (ckpts / ".tmp-step_000006" / "state.pt").is_file()  # the torn write is there ...
    assert not (ckpts / "step_000006").exists()  # ... but never under a checkpoint name
    assert resolve_resume("latest", root / "torn") == ckpts / "step_000004"
    torch.load(ckpts / "step_000004" / "state.pt", weights_only=False)  # whole and loadable
    run_cli("train", "--config", str(cfg), "--resume", "latest")
    assert not list(ckpts.glob(".tmp-*"))  # the torn folder was cleared by the next save
    _assert_identical(root / "torn", ref_state, ref_metrics)


def test_fresh_start_refuses_a_run_folder_with_checkpoints(reference, capsys):
    from clipstack.cli import main

    root, _, _ = reference
    assert main(["train", "--config", str(_config(root, "ref"))]) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--resume latest" in err
    config = json.loads((root / "ref" / "config.json").read_text())
    assert config["model_config"]["embed_dim"] == 64 and config["clipstack_version"]
