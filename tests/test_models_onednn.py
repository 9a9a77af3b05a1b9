"""oneDNN linear layers for training (clipstack.models.onednn): same values and gradients as F.linear,
deterministic, reversible, and what `clipstack train` turns on by default on CPU."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from clipstack.models import create_model
from clipstack.models.onednn import onednn_available, onednn_linear, use_onednn

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")]

WIDE = {  # width 256: big enough to be routed (tiny configs are not)
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 256, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 1},
}


@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_gradients_match_f_linear(with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 48, generator=g, requires_grad=True)
    w = torch.randn(80, 48, generator=g, requires_grad=True)
    b = torch.randn(80, generator=g, requires_grad=True) if with_bias else None
    up = torch.randn(3, 7, 80, generator=g)
    leaves = [t for t in (x, w, b) if t is not None]
    ref = F.linear(x, w, b)
    ref_grads = torch.autograd.grad((ref * up).sum(), leaves)
    out = onednn_linear(x, w, b)
    grads = torch.autograd.grad((out * up).sum(), leaves)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


def _step(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, tokens = torch.randn(6, 3, 32, 32, generator=g), torch.randint(1, 400, (6, 16), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    img, txt, scale = model(images, tokens)
    logits = scale * img @ txt.T
    loss = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return loss.detach(), grads


def test_routed_model_trains_like_the_plain_one_and_keeps_its_weights():
    torch.manual_seed(0)
    plain = create_model(WIDE)
    routed = copy.deepcopy(plain)
    assert use_onednn(routed) == 8  # 4 per tower: the fused QKV, out_proj, c_fc, c_proj
    assert use_onednn(create_model("clip-tiny")) == 0  # width 64: left on F.linear
    assert routed.state_dict().keys() == plain.state_dict().keys()
    loss_p, grads_p = _step(plain)
    loss_r, grads_r = _step(routed)
    torch.testing.assert_close(loss_r, loss_p, rtol=1e-5, atol=1e-6)
    for name in grads_p:
        torch.testing.assert_close(grads_r[name], grads_p[name], rtol=1e-3, atol=1e-5, msg=name)
    # The optimizer's update is seen by the next forward (the route reads the live parameters).
    with torch.no_grad():
        probe = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(routed.encode_image(probe), plain.encode_image(probe), rtol=1e-4, atol=1e-5)
    # Reversible: un-routed, the model is plain F.linear again, bit for bit.
    use_onednn(routed, enabled=False)
    with torch.no_grad():
        routed.load_state_dict(plain.state_dict())
        assert torch.equal(routed.encode_image(probe), plain.encode_image(probe))


def test_deterministic_and_autocast_falls_back():
    torch.manual_seed(0)
    base = create_model(WIDE)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    use_onednn(a), use_onednn(b)
    assert torch.equal(_step(a)[0], _step(b)[0])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = a(torch.randn(2, 3, 32, 32), torch.randint(1, 400, (2, 16)))
    assert out[0].dtype == torch.bfloat16  # autocast's own bf16 path ran


def test_train_turns_it_on_for_cpu_fp32(tmp_path):
    from _train_util import tiny_config, write_shards

    from clipstack.train import train

    shards = tmp_path / "shards"
    write_shards(shards, shards=1, per_shard=8)
    config = tmp_path / "wide.json"
    config.write_text(json.dumps(WIDE))
    routed = {}
    for mode in ("auto", "off"):
        cfg = tiny_config(tmp_path / mode, str(shards), model={"name": str(config)},
                          precision={"onednn": mode}, schedule={"epochs": 1, "max_steps": 1, "warmup_steps": 1},
                          checkpoint={"every_steps": 100, "keep_last": 1, "export": False},
                          logging={"run_dir": str(tmp_path / mode), "progress": False, "plots": False})
        result = train(cfg)
        saved = json.loads((result.run_dir / "config.json").read_text())
        routed[mode] = saved["onednn_linears"]
        assert result.last_metrics["loss"] > 0
    assert routed == {"auto": 8, "off": 0}
