"""The training config: file + dotted overrides, type conversion, and errors that name the field."""

from __future__ import annotations

import json

import pytest

from clipstack.cli import main
from clipstack.errors import ConfigError
from clipstack.train.config import TrainConfig, field_paths, load_config


def test_defaults_file_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.01\n  grad_clip: null\ndata:\n  urls: 'a/{0..3}.tar'\n  batch_size: 16\n")
    cfg = load_config(path, {"optim.lr": "1e-3", "data.shuffle_shards": "false", "data.augment_scale": "[0.5, 1]",
                             "model.overrides": '{"init_logit_bias": -10}', "schedule.max_steps": "none"})
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.lr == 1e-3 and cfg.optim.grad_clip is None and cfg.data.batch_size == 16
    assert cfg.data.shuffle_shards is False and cfg.data.augment_scale == [0.5, 1.0]
    assert cfg.model.overrides == {"init_logit_bias": -10} and cfg.schedule.max_steps is None
    assert cfg.optim.weight_decay == 0.2  # untouched default
    assert load_config(overrides={"data.urls": "s/{a,b}.tar"}).data.urls == "s/{a,b}.tar"
    assert load_config(overrides={"data.urls": '["a.tar", "b.tar"]'}).data.urls == ["a.tar", "b.tar"]
    again = load_config(base=cfg.to_dict())
    assert again == cfg


def test_sources_from_json_become_dataclasses(tmp_path):
    cfg = load_config(overrides={"data.sources": json.dumps([{"urls": "a.tar", "weight": 3}, {"urls": "b.tar"}])})
    assert [s.weight for s in cfg.source_list()] == [3.0, 1.0]


@pytest.mark.parametrize("overrides, field, reason", [
    ({"optim.lr": "-1"}, "optim.lr", "must be > 0"),
    ({"optim.lr": "fast"}, "optim.lr", "expected a number"),
    ({"data.batch_size": "8.5"}, "data.batch_size", "expected an integer"),
    ({"data.shuffle_shards": "maybe"}, "data.shuffle_shards", "expected true or false"),
    ({"precision.dtype": "fp8"}, "precision.dtype", "must be fp32, bf16 or fp16"),
    ({"optim.lrr": "1"}, "optim.lrr", "did you mean optim.lr"),
    ({"data.sources": '[{"urls": "a.tar", "weight": 0}]'}, "data.sources[0].weight", "must be > 0"),
    ({"data.augment_ratio": "[1.5, 1]"}, "data.augment_ratio", "0 < min <= max"),
    # A bare comma list is one word per group: the message says how to pass groups.
    ({"data.hard_negatives": "circle,square"}, "data.hard_negatives[0]", "give groups as JSON"),
    ({"data.hard_negatives": '["circle,square", "square,star"]'}, "data.hard_negatives[1]", "already in group 0"),
])
def test_bad_values_name_the_field(overrides, field, reason):
    base = {"data": {"urls": "x.tar"}}
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides, base=base)
    assert str(info.value).startswith(field + ":") and reason in str(info.value)


def test_cli_reports_a_bad_field_in_one_line(capsys, tmp_path):
    code = main(["train", "--data", str(tmp_path / "x.tar"), "--optim.lr", "-1", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "clipstack: error: optim.lr: must be > 0, got -1.0"


def test_cli_names_a_missing_shard(capsys, tmp_path):
    missing = tmp_path / "shards" / "00007.tar"
    code = main(["train", "--data", str(missing), "--run-dir", str(tmp_path / "r"), "--logging.progress", "false"])
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and "shard not found" in err


def test_every_field_is_a_cli_option():
    from clipstack.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for dotted in field_paths():
        assert f"--{dotted}" in help_text
