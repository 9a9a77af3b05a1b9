"""Checkpoint IO: every input format, the offline hub path, resizing on load, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipstack.cli import main as cli_main
from clipstack.errors import ClipstackError, ConfigError
from clipstack.models import create_model, create_model_from_pretrained, get_tokenizer, save_pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")


REPO = Path(__file__).resolve().parents[1]


def _outputs(model, image_size=32):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, image_size, image_size, generator=g)
    text = get_tokenizer("clip-tiny")(["a cat", "two dogs on grass"])
    with torch.no_grad():
        return model.eval().encode_image(image), model.encode_text(text)


def _assert_same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


@pytest.fixture(scope="module")
def trained():
    """A clip-tiny with non-initial weights, so a load that silently kept fresh weights would show."""
    torch.manual_seed(123)
    model = create_model("clip-tiny")
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    return model


def test_save_pretrained_round_trip(trained, tmp_path):
    out = save_pretrained(trained, tmp_path / "model")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["open_clip_config.json", "open_clip_model.safetensors"]  # no temp files left behind
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"] == trained.model_config
    assert cfg["preprocess_cfg"]["mean"][0] == pytest.approx(0.48145466)
    loaded, preprocess = create_model_from_pretrained(out)
    _assert_same(_outputs(loaded), _outputs(trained))
    assert loaded.logit_scale.item() == 3.0 and not loaded.training
    assert preprocess.size == (32, 32)
    _assert_same(_outputs(create_model(f"local-dir:{out}")), _outputs(trained))


def test_training_checkpoint_with_module_prefix(trained, tmp_path):
    path = tmp_path / "epoch_3.pt"
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state, "optimizer": {"state": {}}}, path)
    _assert_same(_outputs(create_model("clip-tiny", pretrained=path)), _outputs(trained))


def test_plain_bin_safetensors_and_folder(trained, tmp_path):
    from safetensors.torch import save_file

    torch.save(trained.state_dict(), tmp_path / "weights.bin")
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "weights.safetensors")
    for name in ("weights.bin", "weights.safetensors"):
        _assert_same(_outputs(create_model("clip-tiny", pretrained=tmp_path / name)), _outputs(trained))
    folder = tmp_path / "hub_layout"
    folder.mkdir()
    torch.save(trained.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": trained.model_config,
                                                              "preprocess_cfg": {"resize_mode": "squash"}}))
    loaded = create_model(folder)
    _assert_same(_outputs(loaded), _outputs(trained))
    assert loaded.preprocess_cfg["resize_mode"] == "squash"
    _assert_same(_outputs(create_model("clip-tiny", pretrained=folder)), _outputs(trained))


def test_position_embeddings_resized_like_open_clip(trained, tmp_path):
    path = save_pretrained(trained, tmp_path) / "open_clip_model.safetensors"
    big = create_model("clip-tiny-64", pretrained=path, context_length=16)
    assert big.visual.positional_embedding.shape == (65, 64)
    assert big.text.positional_embedding.shape == (16, 64)
    torch.testing.assert_close(big.visual.positional_embedding[0], trained.visual.positional_embedding[0])
    open_clip_model = pytest.importorskip("open_clip.model")
    sd = {k: v.clone() for k, v in trained.state_dict().items()}

    class Target(torch.nn.Module):  # what open_clip's resize functions read from a model
        def __init__(self):
            super().__init__()
            self.visual = type("V", (), {"grid_size": (8, 8)})()
            self.positional_embedding = torch.zeros(16, 64)

    open_clip_model.resize_pos_embed(sd, Target())
    open_clip_model.resize_text_pos_embed(sd, Target())
    torch.testing.assert_close(big.visual.positional_embedding.detach(), sd["visual.positional_embedding"])
    torch.testing.assert_close(big.text.positional_embedding.detach(), sd["positional_embedding"])
    with torch.no_grad():
        assert big.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 64)


def test_missing_logit_bias_is_zero_filled(trained, tmp_path):
    torch.save(trained.state_dict(), tmp_path / "clip.pt")
    model = create_model("clip-tiny", pretrained=tmp_path / "clip.pt", init_logit_bias=-10)
    assert model.logit_bias.item() == 0.0 and model.logit_scale.item() == 3.0


def test_wrong_config_is_one_clear_error(trained, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save(trained.state_dict(), path)
    with pytest.raises(ClipstackError) as err:
        create_model("clip-tiny", pretrained=path, embed_dim=32, text_cfg={"layers": 1})
    msg = str(err.value)
    assert str(path) in msg and "visual.proj (64, 64) vs model (64, 32)" in msg
    assert "unexpected keys" in msg and "transformer.resblocks.1." in msg
    with pytest.raises(ClipstackError, match="missing keys"):
        create_model("siglip-tiny", pretrained=path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ClipstackError, match="bad.pt"):
        create_model("clip-tiny", pretrained=path)


def test_checkpoint_passed_as_model_name_explains(trained, tmp_path):
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="pretrained="):
        create_model(tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="open_clip_config.json"):
        create_model(tmp_path)


def _build_hub_cache(hf_home: Path, repo_id: str, files: dict[str, Path]) -> None:
    """The layout huggingface_hub keeps on disk: refs/main names a snapshot holding the files."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, src in files.items():
        (snapshot / name).write_bytes(src.read_bytes())


def test_hf_hub_offline_from_local_cache(trained, tmp_path):
    exported = save_pretrained(trained, tmp_path / "export")
    hf_home = tmp_path / "hf_home"
    _build_hub_cache(hf_home, "someorg/tiny-clip", {p.name: p for p in exported.iterdir()})
    expected = torch.cat(_outputs(trained), dim=1)
    torch.save(expected, tmp_path / "expected.pt")
    script = f"""
import torch, tests.conftest, open_clip
from clipstack.models import create_model
from tests.test_models_io import _outputs
expected = torch.load({str(tmp_path / 'expected.pt')!r})
for model in (create_model("hf-hub:someorg/tiny-clip"), create_model("clip-tiny", pretrained="hf-hub:someorg/tiny-clip")):
    assert (torch.cat(_outputs(model), dim=1) - expected).abs().max() < 1e-6  # other thread count
ref, _ = open_clip.create_model_from_pretrained("hf-hub:someorg/tiny-clip")
assert (torch.cat(_outputs(ref), dim=1) - expected).abs().max() < 1e-5
try:
    create_model("hf-hub:someorg/absent")
except Exception as err:
    assert type(err).__name__ == "ClipstackError" and "someorg/absent" in str(err), err
else:
    raise AssertionError("an uncached repo must fail offline")
print("hub-ok")
"""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "hub-ok" in proc.stdout, proc.stderr[-3000:]


def test_cli_lists_and_shows_configs(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    assert "clip-tiny" in out and "siglip-tiny" in out and "sigmoid" in out
    assert cli_main(["models", "--show", "clip-tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["embed_dim"] == 64
    assert cli_main(["models", "--show", "nope"]) == 2
    assert "unknown model config 'nope'" in capsys.readouterr().err


def test_training_checkpoint_folders_load_as_pretrained_and_sharded_ones_say_why(tmp_path):
    from clipstack.errors import ClipstackError
    from clipstack.models import create_model

    source = create_model("clip-tiny")
    ckpt = tmp_path / "step_000010"
    ckpt.mkdir()
    torch.save({"state_dict": source.state_dict(), "optimizer": {}, "step": 10}, ckpt / "state.pt")
    (ckpt / "meta.json").write_text('{"step": 10, "sharded": false}')
    loaded = create_model("clip-tiny", pretrained=str(ckpt))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())
    (ckpt / "sharded").mkdir()
    with pytest.raises(ClipstackError, match="FSDP checkpoint keeps its weights in sharded/"):
        create_model("clip-tiny", pretrained=str(ckpt))
