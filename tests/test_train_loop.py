"""The loop in-process: callbacks every N steps, LiT freezing, step and time caps, SigLIP, plots, export."""

from __future__ import annotations

import json

import pytest
import torch
from _train_util import read_metrics, tiny_config, write_shards

from clipstack.train import Callback, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop_shards")
    write_shards(root, shards=2, per_shard=8)
    return root


def test_callbacks_lit_max_steps_plots_and_export(shards, tmp_path):
    from clipstack.models import create_model

    torch.manual_seed(0)
    init = create_model("clip-tiny").state_dict()
    calls = []

    def probe(ctx):
        calls.append((ctx.step, ctx.final, ctx.model.training))
        return {"probe_norm": float(ctx.model.logit_scale.detach())}

    cfg = tiny_config(tmp_path / "run", str(shards), model={"name": "clip-tiny", "lock_image": True,
                                                            "grad_checkpointing": True},
                      schedule={"epochs": 3, "max_steps": 5, "warmup_steps": 1},
                      checkpoint={"every_steps": 100, "keep_last": 1, "export": True},
                      logging={"run_dir": str(tmp_path / "run"), "progress": False, "plots": True})
    result = train(cfg, callbacks=[Callback(probe, every_steps=2, name="probe")])
    assert result.step == 5 and result.stopped == "max_steps"
    assert calls == [(2, False, False), (4, False, False), (5, True, False)]  # eval mode inside callbacks
    records = read_metrics(result.run_dir)
    steps = [r for r in records if "callback" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert {"loss", "lr", "logit_scale", "logit_bias", "grad_norm", "samples_per_s", "data_wait"} <= set(steps[0])
    assert [r["step"] for r in records if r.get("callback") == "probe"] == [2, 4, 5]
    trained = create_model(str(result.export_path)).state_dict()
    assert all(torch.equal(trained[k], init[k]) for k in init if k.startswith("visual."))  # LiT: frozen
    assert any(not torch.equal(trained[k], init[k]) for k in init if not k.startswith("visual."))
    assert sorted(p.name for p in (result.run_dir / "plots").iterdir()) == ["loss.png", "lr.png",
                                                                           "temperature.png"]
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["config"]["model"]["lock_image"] is True and saved["total_steps"] == 5


def test_open_clip_loads_the_export(shards, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    cfg = tiny_config(tmp_path / "run", str(shards), schedule={"epochs": 1, "warmup_steps": 1},
                      checkpoint={"every_steps": 100, "export": True})
    result = train(cfg)
    ours = __import__("clipstack.models", fromlist=["create_model"]).create_model(str(result.export_path))
    theirs = open_clip.create_model("local-dir:" + str(result.export_path))
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 400, (2, 32))
    with torch.no_grad():
        assert torch.allclose(ours.encode_image(images), theirs.encode_image(images), atol=1e-5)
        assert torch.allclose(ours.encode_text(tokens), theirs.encode_text(tokens), atol=1e-5)


def test_siglip_time_budget_and_plot_command(shards, tmp_path, capsys):
    from clipstack.cli import main

    cfg = tiny_config(tmp_path / "run", str(shards), model={"name": "siglip-tiny"},
                      schedule={"epochs": 50, "time_budget_s": 1.0, "warmup_steps": 1},
                      checkpoint={"every_steps": 1000, "keep_last": 1, "export": True},
                      logging={"run_dir": str(tmp_path / "run"), "progress": False, "plots": False,
                               "tensorboard": True})
    result = train(cfg)
    tb_note = "tensorboard is not installed" in capsys.readouterr().out
    assert tb_note or any((result.run_dir / "tensorboard").iterdir())  # optional, never fatal
    assert result.stopped == "time_budget" and 1 <= result.step < 100
    assert result.checkpoint.name == f"step_{result.step:06d}"  # resumable, and exported so far
    from clipstack.models import create_model

    exported, from_ckpt = create_model(str(result.export_path)), create_model("siglip-tiny", pretrained=str(
        result.checkpoint))  # a checkpoint folder loads as pretrained weights
    for name, value in exported.state_dict().items():
        assert torch.equal(value, from_ckpt.state_dict()[name]), name
    last = read_metrics(result.run_dir)[-1]
    assert last["logit_bias"] is not None and abs(last["logit_bias"] + 10) < 1  # SigLIP init bias -10
    assert main(["plot", str(result.run_dir), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "logit_bias.png").is_file()
    assert "temperature.png" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["clip-tiny", "siglip-tiny"])
def test_hard_negatives_with_several_captions_and_accumulation(shards, tmp_path, model):
    cfg = tiny_config(tmp_path / "run", str(shards), model={"name": model},
                      data={"urls": str(shards), "batch_size": 8, "workers": 0, "captions_per_image": 2,
                            "hard_negatives": ["square,circle,triangle"]},
                      optim={"lr": 1e-3, "accum_freq": 2},
                      schedule={"epochs": 2, "max_steps": 3, "warmup_steps": 1},
                      checkpoint={"every_steps": 100, "keep_last": 1, "export": False},
                      logging={"run_dir": str(tmp_path / "run"), "progress": False, "plots": False})
    result = train(cfg)
    assert result.step == 3
    counts = result.data_stats["counts"]
    assert counts["hard_negative"] + counts.get("no_hard_negative", 0) == counts["kept"] == 24
    assert counts["hard_negative"] > 0
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 for r in read_metrics(result.run_dir))


def test_resnet_tower_trains_with_accumulation_and_resumes_exactly(shards, tmp_path):
    """BatchNorm running statistics are model state: a run stopped mid-epoch and resumed from its last
    checkpoint ends bitwise equal to an uninterrupted one."""
    from _train_util import final_state

    def config(run: str, resume: str | None = None) -> dict:
        return tiny_config(tmp_path / run, str(shards), model={"name": "clip-tiny-rn"},
                           optim={"lr": 1e-3, "accum_freq": 2}, schedule={"epochs": 2, "warmup_steps": 1},
                           checkpoint={"every_steps": 2, "keep_last": 2, "export": False, "resume": resume})

    straight = train(config("straight"))
    assert straight.step == 4

    def crash(ctx):
        if ctx.step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config("crashed"), callbacks=[Callback(crash, every_steps=1, name="crash")])
    resumed = train(config("crashed", resume="latest"))
    assert resumed.step == 4
    ref, got = final_state(tmp_path / "straight"), final_state(tmp_path / "crashed")
    assert any(k.endswith("running_mean") for k in ref) and ref.keys() == got.keys()
    assert [k for k in ref if not torch.equal(ref[k], got[k])] == []
    assert not torch.equal(ref["visual.bn1.running_mean"], torch.zeros_like(ref["visual.bn1.running_mean"]))
