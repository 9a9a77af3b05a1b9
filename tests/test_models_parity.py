"""Parity with the real open_clip: same weights, same inputs -> same embeddings (fp32, max abs diff
<= 1e-5), in both directions, for ViT-B-32, a custom config exercising the options, and SigLIP-style
configs; and open_clip loads a `save_pretrained` folder with the same outputs."""

from __future__ import annotations

import copy

import pytest
import torch

from clipstack.models import create_model, get_model_config, get_tokenizer, save_pretrained

open_clip = pytest.importorskip("open_clip")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


ATOL = 1e-5

# A user's own config touching the options OpenCLIP configs use (not a bundled one).
CUSTOM = {
    "embed_dim": 48,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 40, "patch_size": 10, "width": 64, "layers": 2, "head_width": 16,
                   "mlp_ratio": 2.5, "ls_init_value": 0.5, "pool_type": "avg", "final_ln_after_pool": True,
                   "no_ln_pre": True, "norm_kwargs": {"eps": 1e-6}},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2,
                 "mlp_ratio": 3.0, "ls_init_value": 0.25},
}
SIGLIP_LAST = {
    "embed_dim": 32, "init_logit_bias": -10, "init_logit_scale": 2.302585, "custom_text": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
}


def _open_clip_model(cfg: dict):
    cfg = copy.deepcopy(cfg)
    cls = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
    return cls(**cfg).eval()


def _inputs(model, batch=2):
    g = torch.Generator().manual_seed(7)
    image = torch.randn(batch, 3, *model.image_size, generator=g)
    captions = ["a photo of a cat", "an emoji 😀 and &amp; a very long caption " * 6, "", "a dog"][:batch]
    return image, get_tokenizer(model.model_config)(captions)


def _max_diffs(ours, ref, image, text):
    with torch.no_grad():
        pairs = [(ours.encode_image(image), ref.encode_image(image)),
                 (ours.encode_text(text), ref.encode_text(text))]
        out_ours, out_ref = ours(image, text), ref(image, text)
    diffs = [(a - b).abs().max().item() for a, b in pairs]
    diffs += [(a - b).abs().max().item() for a, b in zip(out_ours, out_ref)]
    return diffs


def _check_both_ways(cfg: dict, batch: int = 2):
    ref, ours = _open_clip_model(cfg), create_model(cfg).eval()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)  # open_clip -> clipstack
    image, text = _inputs(ours, batch)
    assert max(_max_diffs(ours, ref, image, text)) <= ATOL
    fresh_ours = create_model(cfg).eval()
    ref.load_state_dict(fresh_ours.state_dict(), strict=True)  # clipstack -> open_clip
    assert max(_max_diffs(fresh_ours, ref, image, text)) <= ATOL


def test_vit_b_32_both_directions():
    ref = open_clip.create_model("ViT-B-32").eval()
    # built on the meta device and filled from open_clip: skips a second 150M-parameter random init
    ours = create_model("ViT-B-32", device="meta").to_empty(device="cpu").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    image, text = _inputs(ours, batch=2)

    def encode_diffs():
        with torch.no_grad():
            return [(ours.encode_image(image) - ref.encode_image(image)).abs().max().item(),
                    (ours.encode_text(text) - ref.encode_text(text)).abs().max().item()]

    assert max(encode_diffs()) <= ATOL
    # reverse: change our weights so the check cannot pass on open_clip's own values
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(1.01)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert max(encode_diffs()) <= ATOL


@pytest.mark.parametrize("name", ["clip-tiny", "siglip-tiny"])
def test_bundled_tiny_configs(name):
    _check_both_ways(get_model_config(name), batch=4)


@pytest.mark.parametrize("cfg", [CUSTOM, SIGLIP_LAST], ids=["custom-options", "siglip-last-pool"])
def test_custom_configs(cfg):
    _check_both_ways(cfg, batch=4)


def test_bundled_big_configs_build_in_open_clip_layout():
    """Key names and shapes of the standard configs equal open_clip's (ViT-B-16-SigLIP: our native-tower
    variant, compared with open_clip built from the same config)."""
    with torch.device("meta"):
        for name in ("ViT-B-16", "ViT-L-14", "ViT-B-32-quickgelu", "ViT-B-16-SigLIP"):
            cfg = get_model_config(name)
            if name != "ViT-B-16-SigLIP":  # our copy of the config equals open_clip's
                assert cfg == open_clip.get_model_config(name)
            ref, ours = _open_clip_model(cfg), create_model(cfg, device="meta")
            assert {k: v.shape for k, v in ours.state_dict().items()} == \
                {k: v.shape for k, v in ref.state_dict().items()}, name


def test_open_clip_loads_save_pretrained(tmp_path):
    for name in ("clip-tiny", "siglip-tiny"):
        ours = create_model(name).eval()
        folder = save_pretrained(ours, tmp_path / name)
        ref, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
        image, text = _inputs(ours, batch=2)
        assert max(_max_diffs(ours, ref.eval(), image, text)) <= ATOL
        assert preprocess.transforms[0].size == 32
