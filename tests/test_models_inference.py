"""oneDNN-packed inference (clipstack.models.inference): same outputs and weights, undoable, switchable."""

from __future__ import annotations

import pytest
import torch

from clipstack.models import create_model, get_tokenizer
from clipstack.models.inference import is_packed, pack_for_inference, packing_available, unpack_inference

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not packing_available(), reason="torch built without oneDNN")]


@pytest.mark.parametrize("name", ["clip-tiny", "siglip-tiny"])
def test_packed_model_encodes_the_same_and_keeps_its_weights(name):
    from clipstack.evaluate.embed_cache import model_fingerprint

    torch.manual_seed(0)
    model = create_model(name).eval()
    images = torch.randn(5, 3, 32, 32)
    tokens = get_tokenizer(name)(["a red circle", "two blue squares left of a star", "", "x" * 200, "hi"])
    with torch.inference_mode():
        ref_img, ref_txt = model.encode_image(images), model.encode_text(tokens)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fingerprint = model_fingerprint(model)

    assert pack_for_inference(model) is model and is_packed(model)
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_image(images), ref_img, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), ref_txt, rtol=0, atol=1e-5)
        out = model(images, tokens)
    assert len(out) == (4 if name.startswith("siglip") else 3)
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)
    assert model_fingerprint(model) == fingerprint  # the eval embedding cache still hits
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # eval --precision amp_bf16
        torch.testing.assert_close(model.encode_image(images).float(), ref_img, rtol=0, atol=0.1)

    unpack_inference(model)
    assert not is_packed(model)
    with torch.inference_mode():
        assert torch.equal(model.encode_image(images), ref_img)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("CLIPSTACK_NO_ONEDNN", "1")
    model = pack_for_inference(create_model("clip-tiny"))
    assert not is_packed(model) and not model.training


def test_only_fp32_cpu_parameters_are_packed():
    model = create_model("clip-tiny").to(torch.bfloat16)
    assert not is_packed(pack_for_inference(model))
