"""The model itself: shapes, normalization, OpenCLIP key layout, options, towers' forward_features."""

from __future__ import annotations

import math

import pytest
import torch

from clipstack.errors import ConfigError
from clipstack.models import CLIP, create_model, get_model_config, get_tokenizer, list_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return create_model("clip-tiny").eval()


def test_list_models_has_the_contract_names():
    names = list_models()
    for name in ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14", "ViT-B-16-SigLIP",
                 "clip-tiny", "clip-tiny-64", "siglip-tiny"):
        assert name in names


def test_tiny_contract_attributes(tiny):
    assert isinstance(tiny, CLIP)
    assert tiny.image_size == (32, 32) and tiny.context_length == 32 and tiny.embed_dim == 64
    assert tiny.logit_bias is None
    assert tiny.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert tiny.model_config == get_model_config("clip-tiny")
    assert tiny.preprocess_cfg["size"] == [32, 32] and tiny.preprocess_cfg["resize_mode"] == "shortest"
    assert create_model("clip-tiny-64").image_size == (64, 64)


def test_forward_normalized_and_encode(tiny):
    tok = get_tokenizer("clip-tiny")
    image, text = torch.randn(3, 3, 32, 32), tok(["a cat", "a dog", "a red car"])
    assert text.shape == (3, 32)
    with torch.no_grad():
        img_f, txt_f, scale = tiny(image, text)
        raw = tiny.encode_image(image)
    assert img_f.shape == txt_f.shape == (3, 64)
    torch.testing.assert_close(img_f.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt_f.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(img_f, raw / raw.norm(dim=-1, keepdim=True))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert tiny(image=None, text=text)[0] is None
    # one image's features do not depend on the rest of the batch
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_image(image[:1]), raw[:1], atol=1e-5, rtol=1e-5)


def test_get_logits_and_context_length_check(tiny):
    tok = get_tokenizer("clip-tiny")
    image, text = torch.randn(2, 3, 32, 32), tok(["a", "b", "c"])
    with torch.no_grad():
        logits_per_image, logits_per_text = tiny.get_logits(image, text)
        img_f, txt_f, scale = tiny(image, text)
    assert logits_per_image.shape == (2, 3) and torch.equal(logits_per_text, logits_per_image.T)
    torch.testing.assert_close(logits_per_image, scale * img_f @ txt_f.T)
    with pytest.raises(ValueError, match=r"takes \(32, 32\)"):
        tiny.encode_image(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="context length 32"):
        tiny.encode_text(tok(["word " * 50], context_length=40))


def test_siglip_tiny_has_bias_and_text_under_text_prefix():
    model = create_model("siglip-tiny").eval()
    assert model.logit_bias.item() == -10.0
    assert model.logit_scale.item() == pytest.approx(math.log(10))
    out = model(torch.randn(2, 3, 32, 32), get_tokenizer("siglip-tiny")(["a", "b"]))
    assert len(out) == 4 and out[3].item() == -10.0
    keys = set(model.state_dict())
    assert "text.token_embedding.weight" in keys and "text.text_projection.weight" in keys
    assert "text.text_projection.bias" in keys and "token_embedding.weight" not in keys


def test_state_dict_has_openclip_keys_and_shapes():
    sd = create_model("ViT-B-32", device="meta").state_dict()
    expected = {
        "visual.class_embedding": (768,), "visual.positional_embedding": (50, 768),
        "visual.conv1.weight": (768, 3, 32, 32), "visual.proj": (768, 512),
        "visual.transformer.resblocks.0.attn.in_proj_weight": (2304, 768),
        "visual.transformer.resblocks.11.mlp.c_fc.weight": (3072, 768),
        "token_embedding.weight": (49408, 512), "positional_embedding": (77, 512),
        "transformer.resblocks.0.attn.out_proj.weight": (512, 512), "ln_final.weight": (512,),
        "text_projection": (512, 512), "logit_scale": (),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("text.") for k in sd) and "attn_mask" not in sd
    assert "visual.conv1.bias" not in sd and len(sd) == 302
    # the nested names used in code load back through the same flat layout
    model, clone = create_model("clip-tiny"), create_model("clip-tiny")
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.text.token_embedding.weight, model.text.token_embedding.weight)


def test_forward_features_tokens_mask_pooled(tiny):
    tokens = get_tokenizer("clip-tiny")(["a cat", "a much longer caption about a dog"])
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = tiny.text.forward_features(tokens)
        vis = tiny.visual.forward_features(image)
        # encode_* take shortcuts (padding trimmed, class-token-only last block): same result
        torch.testing.assert_close(vis.pooled, tiny.encode_image(image), atol=1e-6, rtol=1e-5)
    assert out.tokens.shape == (2, 32, 64) and out.mask.dtype == torch.bool
    assert out.mask.sum(1).tolist() == [int((tokens[i] != 0).sum()) for i in range(2)]
    torch.testing.assert_close(out.pooled, tiny.encode_text(tokens).detach(), atol=1e-6, rtol=1e-5)
    assert vis.tokens.shape == (2, 17, 64) and vis.mask.all() and vis.pooled.shape == (2, 64)


def test_packed_attention_mask_isolates_images(tiny):
    """A block-diagonal attn_mask (NaViT-style packing) keeps two halves of a sequence independent."""
    image = torch.randn(1, 3, 32, 32)
    n = 17
    block = torch.zeros(1, n, n, dtype=torch.bool)
    block[:, :9, :9] = True
    block[:, 9:, 9:] = True
    with torch.no_grad():
        x = tiny.visual.embed(image)
        full = tiny.visual.transformer(x, attn_mask=block.unsqueeze(1))
        first = tiny.visual.transformer(x[:, :9])
    torch.testing.assert_close(full[:, :9], first, atol=1e-5, rtol=1e-5)


def test_text_attn_mask_combines_with_causal(tiny):
    tokens = get_tokenizer("clip-tiny")(["a photo of a cat"])
    everything = torch.ones(1, 32, 32, dtype=torch.bool)
    with torch.no_grad():
        plain = tiny.text.forward_features(tokens)
        masked = tiny.text.forward_features(tokens, attn_mask=everything)
        no_self_look_back = tiny.text.forward_features(tokens, attn_mask=torch.eye(32, dtype=torch.bool)[None])
    torch.testing.assert_close(masked.pooled, plain.pooled)
    assert (no_self_look_back.pooled - plain.pooled).abs().max() > 1e-4


def test_grad_checkpointing_same_result_and_grads():
    model = create_model("clip-tiny")
    image, text = torch.randn(2, 3, 32, 32), get_tokenizer("clip-tiny")(["a", "b"])
    loss = model(image, text)[0].sum() + model(image, text)[1].sum()
    loss.backward()
    grad = model.visual.conv1.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    loss2 = model(image, text)[0].sum() + model(image, text)[1].sum()
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(model.visual.conv1.weight.grad, grad)


def test_lock_towers():
    model = create_model("clip-tiny")
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for p in model.text.parameters())
    model.lock_image_tower(unlocked_groups=1)
    assert model.visual.proj.requires_grad and not model.visual.conv1.weight.requires_grad
    model.lock_text_tower(unlocked_layers=1)
    assert model.text.transformer.resblocks[1].ln_1.weight.requires_grad
    assert not model.text.transformer.resblocks[0].ln_1.weight.requires_grad
    assert not model.text.token_embedding.weight.requires_grad
    assert model.logit_scale.requires_grad


def test_options_quick_gelu_layer_scale_pool_patch_dropout():
    model = create_model("clip-tiny", quick_gelu=True, vision_cfg={"ls_init_value": 0.1, "pool_type": "avg",
                                                                    "patch_dropout": 0.5, "mlp_ratio": 2.0})
    block = model.visual.transformer.resblocks[0]
    assert type(block.mlp.gelu).__name__ == "QuickGELU"
    assert torch.allclose(block.ls_1.gamma, torch.full((64,), 0.1))
    assert block.mlp.c_fc.weight.shape == (128, 64)
    image = torch.randn(2, 3, 32, 32)
    model.train()
    assert model.visual.forward_features(image).tokens.shape == (2, 1 + 8, 64)  # half the 16 patches
    model.eval()
    assert model.visual.forward_features(image).tokens.shape == (2, 17, 64)
    causal_free = create_model("clip-tiny", text_cfg={"no_causal_mask": True, "pool_type": "last"})
    assert not causal_free.text.causal


def test_causal_text_ignores_tokens_after_eot(tiny):
    tok = get_tokenizer("clip-tiny")
    a = tok(["a photo of a cat"])
    b = a.clone()
    b[0, 10:] = 5  # junk after the EOT must not change the pooled EOT feature in a causal tower
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_text(a), tiny.encode_text(b))


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would run on CPU, if it is installed."""
    import shutil

    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return shutil.which(get_cpp_compiler())
    except Exception:  # noqa: BLE001 - any failure to find one means there is none to use
        return None


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_encode_text_compiles_in_one_graph_with_eager_outputs(tiny, backend):
    """Eager cuts the padding after the longest caption (a data-dependent length); under torch.compile
    the text tower keeps the full context instead, so it traces as one graph (fullgraph=True raises on
    any graph break) and, causality hiding what follows EOT, gives eager's embeddings."""
    if backend == "inductor" and _cpp_compiler() is None:
        pytest.skip("inductor on CPU needs a C++ compiler (g++/clang++), and none is installed")
    torch._dynamo.reset()
    tokens = get_tokenizer("clip-tiny")(["a photo of a cat", "a dog", "", "a longer caption, " * 4])
    compiled = torch.compile(tiny.encode_text, fullgraph=True, backend=backend)
    with torch.no_grad():
        eager = tiny.encode_text(tokens)
        torch.testing.assert_close(compiled(tokens), eager, rtol=0, atol=1e-5)
        torch.testing.assert_close(compiled(tokens[:2]), eager[:2], rtol=0, atol=1e-5)
    explain = torch._dynamo.explain(tiny.text)(tokens)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    torch._dynamo.reset()


@pytest.mark.parametrize("cfg, field", [
    ({"embed_dim": 8, "vision_cfg": {"timm_model_name": "vit"}, "text_cfg": {}}, "timm_model_name"),
    ({"embed_dim": 8, "vision_cfg": {"bogus": 1}, "text_cfg": {}}, "vision_cfg.bogus"),
    ({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {"pool_type": "mean"}}, "pool_type"),
    ({"vision_cfg": {}, "text_cfg": {}}, "embed_dim"),
    ({"embed_dim": 8, "vision_cfg": {"layers": [3, 4, 6]}, "text_cfg": {}}, "vision_cfg.layers"),
    ({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {"layers": [1, 2]}}, "text_cfg.layers"),
    ({"embed_dim": 8, "vision_cfg": {"patch_size": None}, "text_cfg": {}}, "vision_cfg.patch_size"),
])
def test_bad_configs_name_the_field(cfg, field):
    with pytest.raises(ConfigError, match=field):
        create_model(cfg)


def test_unknown_name_lists_available():
    with pytest.raises(ConfigError, match="clip-tiny"):
        create_model("no-such-model")
