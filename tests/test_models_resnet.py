"""The ResNet tower (OpenCLIP's ModifiedResNet): same keys and outputs as open_clip both ways, the RN50
layout, token features, locking with frozen BatchNorm statistics, gradient checkpointing, CPU inference
packing and clear errors for sizes it cannot take."""

from __future__ import annotations

import copy

import pytest
import torch

from clipstack.errors import ConfigError
from clipstack.models import (
    create_model,
    get_model_config,
    get_tokenizer,
    pack_for_inference,
    save_pretrained,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-5

# Two blocks in a stage (exercises the non-downsampling block) and a 2x2 feature map.
RN_SMALL = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": [2, 1, 1, 1], "width": 8, "head_width": 16,
                   "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values for every parameter and BatchNorm buffer: the default init zeroes each block's last
    BN gain (branches start as the identity), which would hide a wrong residual branch."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                fresh = torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var") else \
                    torch.randn(t.shape, generator=g) * 0.2
                t.copy_(fresh)


def _inputs(model, batch: int = 3):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(batch, 3, *model.image_size, generator=g)
    return image, get_tokenizer(model.model_config)(["a red circle", "two blue squares", ""][:batch])


def _diff(ours, ref, image, text) -> float:
    with torch.no_grad():
        pairs = [(ours.encode_image(image), ref.encode_image(image)),
                 (ours.encode_text(text), ref.encode_text(text))]
    return max((a - b).abs().max().item() for a, b in pairs)


def test_same_outputs_as_open_clip_both_ways():
    open_clip = pytest.importorskip("open_clip")
    ref = open_clip.CLIP(**copy.deepcopy(RN_SMALL)).eval()
    ours = create_model(RN_SMALL).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    _randomize(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)  # open_clip -> clipstack
    image, text = _inputs(ours)
    assert _diff(ours, ref, image, text) <= ATOL
    _randomize(ours, seed=5)
    ref.load_state_dict(ours.state_dict(), strict=True)  # clipstack -> open_clip
    assert _diff(ours, ref, image, text) <= ATOL
    ours.train()
    ref.train()  # training mode: batch statistics, same BatchNorm momentum
    out, out_ref = ours.encode_image(image), ref.encode_image(image)
    torch.testing.assert_close(out, out_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.visual.bn1.running_mean, ref.visual.bn1.running_mean)


def test_rn50_configs_match_open_clip():
    open_clip = pytest.importorskip("open_clip")
    for name in ("RN50", "RN50-quickgelu"):
        cfg = get_model_config(name)
        assert cfg == open_clip.get_model_config(name)
        with torch.device("meta"):
            ours = create_model(cfg, device="meta")
            ref = open_clip.CLIP(**copy.deepcopy(cfg))
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k: v.shape for k, v in ref.state_dict().items()}, name
        assert ours.visual.attnpool.num_heads == 32  # width 64 * 32 / head_width 64, as CLIP's RN50


def test_open_clip_loads_save_pretrained(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    ours = create_model("clip-tiny-rn").eval()
    _randomize(ours.visual)
    folder = save_pretrained(ours, tmp_path / "rn")
    ref, _ = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    image, text = _inputs(ours)
    assert _diff(ours, ref.eval(), image, text) <= ATOL


def test_tokens_and_pooled_embedding():
    model = create_model(RN_SMALL, image_size=[64, 32]).eval()  # open_clip's RN takes square sizes only
    _randomize(model)
    image, _ = _inputs(model, batch=2)
    with torch.no_grad():
        out = model.image_features(image)
        pooled = model.encode_image(image)
    assert out.tokens.shape == (2, 1 + 2 * 1, 32)  # [mean; 2x1 positions] of a 64x32 input
    assert out.mask.all() and out.mask.shape == (2, 3)
    torch.testing.assert_close(out.pooled, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.tokens[:, 0], pooled, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ResNet tower takes whole images"):
        model.visual.forward_features(image, attn_mask=torch.ones(2, 3, 3, dtype=torch.bool))


def test_sizes_it_cannot_take_get_clear_errors():
    with pytest.raises(ConfigError, match="multiple of 32"):
        create_model(RN_SMALL, image_size=48)
    bad = copy.deepcopy(RN_SMALL)
    bad["vision_cfg"]["layers"] = [2, 2, 2]
    with pytest.raises(ConfigError, match="four positive stage depths"):
        create_model(bad)
    model = create_model("clip-tiny-rn")
    with pytest.raises(ValueError, match=r"images are \(64, 64\) but the model takes \(32, 32\)"):
        model.encode_image(torch.zeros(1, 3, 64, 64))


def test_lock_freezes_groups_and_their_batchnorm_statistics():
    model = create_model(RN_SMALL)
    model.lock_image_tower(unlocked_groups=2)  # layer4 and the attention pool stay trainable
    visual = model.visual
    trainable = {n.split(".")[0] for n, p in visual.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "attnpool"}
    model.train()
    assert not visual.bn1.training and not visual.layer3[0].bn3.training and visual.layer4[0].bn1.training
    before = visual.layer1[0].bn1.running_mean.clone()
    image, _ = _inputs(model, batch=4)
    model.encode_image(image).sum().backward()
    torch.testing.assert_close(visual.layer1[0].bn1.running_mean, before)  # frozen stats unchanged
    assert visual.conv1.weight.grad is None and visual.layer4[0].conv1.weight.grad is not None
    model.lock_image_tower()
    assert not any(p.requires_grad for p in visual.parameters())
    assert not any(m.training for m in visual.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_grad_checkpointing_gives_the_same_gradients():
    model = create_model(RN_SMALL)
    _randomize(model)
    image, _ = _inputs(model, batch=4)

    def grads():
        model.zero_grad()
        model.encode_image(image).square().sum().backward()
        return [p.grad.clone() for p in model.visual.parameters()]

    plain = grads()
    model.set_grad_checkpointing(True)
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_pack_for_inference_keeps_outputs():
    model = create_model(dict(RN_SMALL, embed_dim=256, vision_cfg={**RN_SMALL["vision_cfg"], "width": 16})).eval()
    _randomize(model)
    image, _ = _inputs(model, batch=2)
    with torch.no_grad():
        eager = model.encode_image(image)
        pack_for_inference(model)
        packed = model.encode_image(image)
    torch.testing.assert_close(packed, eager, atol=1e-5, rtol=1e-5)
