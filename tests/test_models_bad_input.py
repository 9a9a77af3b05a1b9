"""Bad model input gets one clear error naming the file or field: unreadable configs, out-of-range
config values, model folders without weights and files that are not checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from clipstack.cli import main as cli_main
from clipstack.errors import ClipstackError, ConfigError, DataError
from clipstack.models import create_model, get_tokenizer, save_pretrained
from clipstack.models.config import CONFIG_DIR, ModelCfg, get_model_config, list_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NOT_UTF8 = b"\xff\xfe{\"a\": 1}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A clip-tiny saved with save_pretrained: config + safetensors weights."""
    torch.manual_seed(7)
    return save_pretrained(create_model("clip-tiny"), tmp_path_factory.mktemp("m") / "tiny")


def _copy_config_only(src: Path, dst: Path) -> Path:
    dst.mkdir()
    (dst / "open_clip_config.json").write_bytes((src / "open_clip_config.json").read_bytes())
    return dst


def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipstack: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# -- 1. config files that are not UTF-8 ------------------------------------------------------------------


def test_non_utf8_config_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "nonutf8.json"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(DataError, match=r"nonutf8\.json: model config is not UTF-8"):
        create_model(path)
    assert "nonutf8.json: model config is not UTF-8" in _one_line_error(capsys, ["models", "--show", str(path)])


def test_model_folder_with_non_utf8_config_names_the_config(tmp_path, model_dir, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "open_clip_config.json").write_bytes(b"\xff\xfe\xfd")
    (folder / "open_clip_model.safetensors").write_bytes((model_dir / "open_clip_model.safetensors").read_bytes())
    with pytest.raises(DataError, match=r"open_clip_config\.json: model config is not UTF-8"):
        create_model(folder)
    with pytest.raises(DataError, match=r"open_clip_config\.json"):
        get_tokenizer(folder)
    err = _one_line_error(capsys, ["models", "--show", str(folder)])
    assert "open_clip_config.json: model config is not UTF-8" in err
    err = _one_line_error(capsys, ["embed", str(folder), str(tmp_path / "shards"), str(tmp_path / "out")])
    assert "open_clip_config.json" in err and not (tmp_path / "out").exists()


# -- 2. config values are type- and range-checked ----------------------------------------------------


@pytest.mark.parametrize("section, key, value, message", [
    ("text_cfg", "heads", 0, "text_cfg.heads: must be >= 1, got 0"),
    ("text_cfg", "width", -64, "text_cfg.width: must be >= 1, got -64"),
    ("text_cfg", "width", "64", "text_cfg.width: must be an integer, got '64'"),
    ("text_cfg", "width", 63, "text_cfg.width 63 is not divisible by heads 2"),
    ("text_cfg", "layers", -1, "text_cfg.layers: must be >= 1, got -1"),
    ("text_cfg", "context_length", 0, "text_cfg.context_length: must be >= 2, got 0"),
    ("text_cfg", "vocab_size", 0, "text_cfg.vocab_size: must be >= 1, got 0"),
    ("text_cfg", "no_causal_mask", "false", "text_cfg.no_causal_mask: must be true or false"),
    ("text_cfg", "mlp_ratio", 0, "text_cfg.mlp_ratio: must be > 0"),
    ("text_cfg", "norm_kwargs", {"eps": -1}, "text_cfg.norm_kwargs.eps: must be > 0"),
    ("vision_cfg", "width", 0, "vision_cfg.width: must be >= 1, got 0"),
    ("vision_cfg", "layers", 1.5, "vision_cfg.layers: must be an integer, got 1.5"),
    ("vision_cfg", "image_size", 0, "vision_cfg.image_size: must be >= 1, got 0"),
    ("vision_cfg", "image_size", 4, "vision_cfg.image_size: must be >= patch_size 8, got 4"),
    ("vision_cfg", "image_size", [32, 32, 3], "vision_cfg.image_size: must be one size or [height, width]"),
    ("vision_cfg", "patch_size", 2.5, "vision_cfg.patch_size: must be an integer, got 2.5"),
    ("vision_cfg", "head_width", 0, "vision_cfg.head_width: must be >= 1, got 0"),
    ("vision_cfg", "patch_dropout", "x", "vision_cfg.patch_dropout: must be a finite number"),
    (None, "embed_dim", -3, "embed_dim: must be >= 1, got -3"),
    (None, "embed_dim", 0, "embed_dim: must be >= 1, got 0"),
    (None, "embed_dim", 1e10, "embed_dim: must be an integer, got 10000000000.0"),
    (None, "embed_dim", 10**10, "embed_dim: must be <= 65536"),
    (None, "embed_dim", True, "embed_dim: must be an integer, got True"),
    (None, "quick_gelu", "yes", "quick_gelu: must be true or false, got 'yes'"),
    (None, "init_logit_bias", "x", "init_logit_bias: must be a finite number or null"),
])
def test_bad_config_value_names_the_field(tmp_path, capsys, section, key, value, message):
    cfg = get_model_config("clip-tiny")
    (cfg[section] if section else cfg)[key] = value
    with pytest.raises(ConfigError) as info:
        create_model(cfg)
    assert f"config dict: {message}" in str(info.value)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert f"cfg.json: {message}" in _one_line_error(capsys, ["models", "--show", str(path)])
    assert capsys.readouterr().out == ""  # nothing printed for a config that cannot be built


def test_sane_fields_with_an_absurd_product_are_refused():
    cfg = get_model_config("clip-tiny")
    cfg["text_cfg"].update(width=65536, heads=1, layers=1024)
    with pytest.raises(ConfigError, match=r"billion weights \(limit 20 billion\)"):
        create_model(cfg)


@pytest.mark.parametrize("text, message", [
    ("[1, 2, 3]", "a model config must be a JSON object"),
    ('{"embed_dim": 8, "vision_cfg": 5, "text_cfg": {}}', "'vision_cfg' must be an object, got int"),
    ("{}", "missing required field 'embed_dim'"),
])
def test_show_refuses_configs_that_are_not_configs(tmp_path, capsys, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    assert message in _one_line_error(capsys, ["models", "--show", str(path)])


def test_overrides_on_a_broken_config_still_name_the_field():
    with pytest.raises(ConfigError, match="'vision_cfg' must be an object"):
        create_model({"embed_dim": 8, "vision_cfg": 5, "text_cfg": {}}, image_size=64)
    with pytest.raises(ConfigError, match="text_cfg.context_length: must be >= 2, got 1"):
        create_model("clip-tiny", context_length=1)


def test_tokenizer_checks_the_fields_it_reads():
    cfg = get_model_config("clip-tiny")
    cfg["text_cfg"]["context_length"] = 0
    with pytest.raises(ConfigError, match="text_cfg.context_length: must be >= 2, got 0"):
        get_tokenizer(cfg)
    cfg["text_cfg"].update(context_length=16, tokenizer_kwargs=["lower"])
    with pytest.raises(ConfigError, match="text_cfg.tokenizer_kwargs: must be an object"):
        get_tokenizer(cfg)


@pytest.mark.parametrize("name", list_models())
def test_every_bundled_config_passes_validation(name):
    cfg = ModelCfg.from_dict(get_model_config(name), source=name)
    assert cfg.embed_dim == get_model_config(name)["embed_dim"]


def test_open_clip_fields_and_forms_are_still_accepted():
    """open_clip's configs carry fields clipstack ignores, [h, w] image sizes and hf tokenizer names."""
    cfg = json.loads((CONFIG_DIR / "clip-tiny.json").read_text())
    cfg["vision_cfg"].update(image_size=[32, 48], output_tokens=False, ls_init_value=None,
                             norm_kwargs={"eps": 1e-6}, timm_model_name=None)
    cfg["text_cfg"].update(hf_tokenizer_name="timm/ViT-B-16-SigLIP", tokenizer_kwargs={"clean": "canonicalize"},
                           pad_id=1, proj_bias=True, mlp_ratio=4)
    cfg.update(init_logit_bias=-10, init_logit_scale=2.3, quick_gelu=True, custom_text=True)
    model = create_model(cfg)
    assert tuple(model.image_size) == (32, 48) and model.logit_bias is not None


# -- 3. a model folder without weights -----------------------------------------------------------------


def test_model_folder_without_weights_is_an_error(tmp_path, model_dir, capsys):
    folder = _copy_config_only(model_dir, tmp_path / "m_nw")
    with pytest.raises(DataError) as info:
        create_model(folder)
    assert "m_nw: model folder has no weight file: none found" in str(info.value)
    assert "open_clip_model.safetensors" in str(info.value)
    err = _one_line_error(capsys, ["embed", str(folder), str(tmp_path / "shards"), str(tmp_path / "out")])
    assert "m_nw: model folder has no weight file" in err and not (tmp_path / "out").exists()
    # the folder's config with weights named explicitly loads those weights
    loaded = create_model(folder, pretrained=model_dir / "open_clip_model.safetensors")
    torch.testing.assert_close(loaded.logit_scale, create_model(model_dir).logit_scale)


def test_model_folder_with_several_unnamed_weights_says_so(tmp_path, model_dir):
    folder = _copy_config_only(model_dir, tmp_path / "m2")
    for name in ("a.safetensors", "b.safetensors"):
        (folder / name).write_bytes((model_dir / "open_clip_model.safetensors").read_bytes())
    with pytest.raises(DataError, match=r"several candidates \(a\.safetensors, b\.safetensors\)"):
        create_model(folder)


def test_registry_name_without_pretrained_still_builds_a_fresh_model():
    model = create_model("clip-tiny")
    assert model.embed_dim == 64


# -- 4. files that are not checkpoints -----------------------------------------------------------------


def test_non_checkpoint_file_is_one_line(tmp_path):
    path = tmp_path / "nonutf8.json"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(DataError) as info:
        create_model("clip-tiny", pretrained=path)
    message = str(info.value)
    assert message == f"{path}: not a checkpoint (neither a safetensors file nor a torch.save file)"


def test_checkpoint_with_pickled_objects_names_the_type(tmp_path):
    path = tmp_path / "ns.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(DataError, match=r"ns\.pt: checkpoint holds a argparse\.Namespace object") as info:
        create_model("clip-tiny", pretrained=path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


@pytest.mark.parametrize("content, message", [
    (b"", "checkpoint file is empty"),
    (b"PK\x03\x04 broken zip", "cannot read checkpoint (RuntimeError: PytorchStreamReader failed"),
])
def test_broken_checkpoint_is_one_line(tmp_path, content, message):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(ClipstackError) as info:
        create_model("clip-tiny", pretrained=path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
