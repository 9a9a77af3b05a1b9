"""Bad input to the train stage: one clear error naming the field or file, and counts that add up.

Non-finite config numbers, a diverging run, non-UTF-8 config files, badly typed model overrides,
damaged checkpoints (with `--resume latest` falling back past them), resuming with another model, and
unreadable shards (named once, with their reason) plus samples left in the shuffle buffer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _train_util import tiny_config, write_config, write_shards

from clipstack.cli import main
from clipstack.errors import ClipstackError, ConfigError
from clipstack.train import train
from clipstack.train.config import load_config


def _strict_json(line: str):
    def refuse(token: str):
        raise AssertionError(f"non-JSON constant {token} in {line!r}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("field, value", [
    ("optim.lr", "inf"), ("optim.lr", "nan"), ("optim.weight_decay", "inf"), ("optim.beta2", "nan"),
    ("optim.eps", "inf"), ("optim.grad_clip", "inf"), ("schedule.time_budget_s", "inf"),
    ("schedule.min_lr_ratio", "nan"), ("data.augment_scale[1]", "[0.5, Infinity]"),
])
def test_non_finite_numbers_are_rejected_naming_the_field(field, value):
    key = field.split("[")[0]
    with pytest.raises(ConfigError) as info:
        load_config(overrides={key: value}, base={"data": {"urls": "x.tar"}})
    assert str(info.value).startswith(f"{field}: expected a finite number")


@pytest.mark.parametrize("overrides, message", [
    ('{"embed_dim": "x"}', "model.overrides.embed_dim: expected an integer, got 'x'"),
    ('{"vision_cfg": {"width": "wide"}}', "model.overrides.vision_cfg.width: expected an integer"),
    ('{"image_size": [32, "x"]}', "model.overrides.image_size[1]: expected an integer"),
    ('{"text_cfg": {"heads": 0}}', "model.overrides.text_cfg.heads: must be >= 1"),
    ('{"init_logit_scale": "inf"}', "model.overrides.init_logit_scale: expected a finite number"),
    ('{"embeddim": 8}', "model.overrides.embeddim: unknown model config key (did you mean "
                        "model.overrides.embed_dim?)"),
])
def test_model_overrides_are_type_checked(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"model.overrides": overrides}, base={"data": {"urls": "x.tar"}})
    assert str(info.value).startswith(message)
    good = load_config(overrides={"model.overrides": '{"embed_dim": "16", "image_size": [32, 32]}'},
                       base={"data": {"urls": "x.tar"}})
    assert good.model.overrides == {"embed_dim": 16, "image_size": [32, 32]}


def test_non_utf8_config_file_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe bad")
    code = main(["train", "--config", str(path), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"clipstack: error: {path}: config file is not UTF-8 text (byte 0: invalid start byte)"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    write_shards(root / "shards", shards=2, per_shard=8)  # 16 samples: 2 steps of 8 per epoch
    return root / "shards"


def _cfg(tmp_path: Path, shards: Path, run: str = "run", **sections) -> dict:
    sections.setdefault("schedule", {"epochs": 4, "warmup_steps": 1, "max_steps": 4})
    return tiny_config(tmp_path / run, str(shards), **sections)


def test_diverging_run_fails_without_saving_or_exporting_nan(tmp_path, shards):
    cfg = _cfg(tmp_path, shards, optim={"lr": 1e30}, checkpoint={"every_steps": 2, "export": True})
    with pytest.raises(ClipstackError, match=r"training diverged by step \d: .*lower optim.lr"):
        train(cfg)
    run = tmp_path / "run"
    assert not (run / "export").exists() and not (run / "checkpoints").exists()
    records = [_strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["loss"] > 0 and records[-1]["loss"] is None and records[-1]["skipped"] is True
    summary = _strict_json((run / "summary.json").read_text())
    assert summary["stopped"] == "diverged" and "diverged" in summary["error"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shards) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4 (copied by each test before damaging it)."""
    root = tmp_path_factory.mktemp("finished")
    train(_cfg(root, shards))
    return root / "run"


def _resume(tmp_path: Path, shards: Path, finished: Path, resume: str, *extra: str) -> tuple[int, str, Path]:
    run = tmp_path / "run"
    if not run.exists():
        shutil.copytree(finished, run)
    config = write_config(tmp_path / "c.json", _cfg(tmp_path, shards, schedule={"epochs": 4, "max_steps": 6}))
    code = main(["train", "--config", str(config), "--resume", resume.format(run=run), *extra])
    return code, "", run


def test_truncated_state_named_and_latest_falls_back(tmp_path, shards, finished, capsys):
    shutil.copytree(finished, tmp_path / "run")
    state = tmp_path / "run" / "checkpoints" / "step_000004" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    code, _, run = _resume(tmp_path, shards, finished, "{run}/checkpoints/step_000004")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"clipstack: error: {state}: checkpoint file is damaged or truncated (File is not a zip file)"

    code, _, run = _resume(tmp_path, shards, finished, "latest")
    captured = capsys.readouterr()
    assert code == 0
    assert f"clipstack: warning: skipping damaged checkpoint: {state}: checkpoint file is damaged" in captured.err
    assert "resumed from" in captured.out and "step_000002 (step 2" in captured.out
    assert json.loads((run / "summary.json").read_text())["step"] == 6


def test_garbage_meta_json_is_one_line_naming_it(tmp_path, shards, finished, capsys):
    shutil.copytree(finished, tmp_path / "run")
    meta = tmp_path / "run" / "checkpoints" / "step_000004" / "meta.json"
    meta.write_text("garbage{")
    code, _, _ = _resume(tmp_path, shards, finished, "{run}/checkpoints/step_000004")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"clipstack: error: {meta}: checkpoint meta.json is not valid JSON")
    assert "\n" not in err


def test_resuming_with_another_model_names_the_checkpoint_and_keys(tmp_path, shards, finished, capsys):
    code, _, run = _resume(tmp_path, shards, finished, "latest", "--model.name", "siglip-tiny")
    err = capsys.readouterr().err.strip()
    state = run / "checkpoints" / "step_000004" / "state.pt"
    assert code == 2 and "\n" not in err
    assert err.startswith(f"clipstack: error: checkpoint.resume: {state}: checkpoint does not fit the model config")
    assert "missing keys" in err and "logit_bias" in err and "another model.name" in err


def _bad_shards(root: Path, shards: Path) -> Path:
    data = root / "mixed"
    data.mkdir()
    for name in ("00000.tar", "00001.tar"):
        shutil.copy(shards / name, data / name)
    whole = (shards / "00001.tar").read_bytes()
    (data / "00002.tar").write_bytes(whole[: len(whole) // 2])  # truncated mid-shard
    (data / "00003.tar").write_bytes(b"this is not a tar file at all" * 40)
    return data


@pytest.mark.parametrize("buffer", [1, 100])
def test_unreadable_shards_named_once_and_counts_balance(tmp_path, shards, capsys, buffer):
    data = _bad_shards(tmp_path, shards)
    cfg = _cfg(tmp_path, data, data={"urls": str(data), "shuffle_buffer": buffer, "steps_per_epoch": 3},
               schedule={"epochs": 3, "warmup_steps": 1})
    code = main(["train", "--config", str(write_config(tmp_path / "c.json", cfg))])
    captured = capsys.readouterr()
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    counts = summary["counts"]
    drops = counts.get("corrupt", 0) + counts.get("no_caption", 0)
    assert counts["seen"] == counts["kept"] + drops + counts["unused_in_buffer"]
    assert counts["kept"] == 9 * 8
    if buffer > 1:
        assert counts["unused_in_buffer"] > 0
    garbage = str(data / "00003.tar")
    assert summary["shard_errors"][garbage].startswith(f"{garbage}: unreadable tar after 0 samples")
    assert counts["unreadable_shards"] == len(summary["shard_errors"])
    assert counts["unreadable_shard_reads"] >= counts["unreadable_shards"]
    warnings = [line for line in captured.err.splitlines() if line.startswith("clipstack: warning:")]
    assert sum(garbage in line for line in warnings) == 1  # once, though re-read every epoch
    line = next(x for x in captured.out.splitlines() if x.startswith("data:"))
    assert f"{counts['seen']} samples read = {counts['kept']} used + {counts['unused_in_buffer']} unused" in line
    assert "00003.tar" in line
