"""train_step: accumulation equals the full batch (CLIP and SigLIP, dropout included, under DDP too),
matches an open_clip-style step, clips, clamps, schedules and skips non-finite steps."""

from __future__ import annotations

import copy
import math
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from clipstack.errors import ConfigError
from clipstack.train.losses import MAX_LOGIT_SCALE, ClipLoss, SigLipLoss
from clipstack.train.optim import build_scheduler, create_optimizer
from clipstack.train.step import train_step

_VOCAB = 512


def _tiny(name: str = "clip-tiny", dtype=torch.float64) -> nn.Module:
    from clipstack.models import create_model

    torch.manual_seed(0)
    # A 512-token vocabulary: the 49408 x 64 embedding would dominate these tests' time.
    return create_model(name, text_cfg={"vocab_size": _VOCAB}).to(dtype)


def _batch(n: int, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g, dtype=dtype)
    texts = torch.randint(1, _VOCAB - 1, (n, 32), generator=g)
    texts[:, 10] = _VOCAB - 1  # EOT (the highest id): the text tower pools here
    texts[:, 11:] = 0
    return images, texts


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("name,loss", [("clip-tiny", ClipLoss()), ("siglip-tiny", SigLipLoss())])
def test_accumulation_gives_full_batch_gradients(name, loss):
    full, accum = _tiny(name), _tiny(name)
    batch = _batch(8)
    train_step(full, batch, loss, create_optimizer(full, lr=1e-4), accum_steps=1)
    res = train_step(accum, batch, loss, create_optimizer(accum, lr=1e-4), accum_steps=4)
    g_full, g_acc = _grads(full), _grads(accum)
    assert "logit_scale" in g_acc  # taken once, not four times (open_clip's accum-freq adds it k times)
    _assert_same_grads(g_full, g_acc, rtol=1e-9, atol=1e-12)
    assert res.samples == 8 and not res.skipped
    _assert_same_grads(dict(full.named_parameters()), dict(accum.named_parameters()), 1e-9, 1e-12)


class _DropoutTowers(nn.Module):
    """Stand-in dual encoder with dropout: accumulation must replay the same masks."""

    def __init__(self) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 8))
        self.txt = nn.Sequential(nn.Embedding(30, 16), nn.Dropout(0.3), nn.Flatten(), nn.Linear(64, 8))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, image, text):
        return {
            "image_features": F.normalize(self.img(image), dim=-1),
            "text_features": F.normalize(self.txt(text), dim=-1),
            "logit_scale": self.logit_scale.exp(),
        }


def test_accumulation_replays_dropout_masks():
    """With dropout, the re-forward of micro-batch j must draw the masks its cached forward drew. Then
    the accumulated gradients equal autograd through the k micro-batch forwards concatenated."""
    torch.manual_seed(0)
    ref = _DropoutTowers().double()
    acc = copy.deepcopy(ref)
    images = torch.randn(12, 3, 2, 2, dtype=torch.float64)
    texts = torch.randint(0, 30, (12, 4))
    torch.manual_seed(7)
    outs = [ref(i, t) for i, t in zip(images.chunk(3), texts.chunk(3))]
    rng_after_forwards = torch.get_rng_state()
    img = torch.cat([o["image_features"] for o in outs])
    txt = torch.cat([o["text_features"] for o in outs])
    ClipLoss()(img, txt, outs[0]["logit_scale"]).backward()
    torch.manual_seed(7)
    train_step(acc, {"image": images, "text": texts}, ClipLoss(), torch.optim.SGD(acc.parameters(), lr=0.1),
               accum_steps=3)
    _assert_same_grads(_grads(ref), _grads(acc), rtol=1e-9, atol=1e-12)
    # The RNG stream continues as after one pass over the micro-batches, not after two.
    assert torch.equal(torch.get_rng_state(), rng_after_forwards)


def test_step_matches_open_clip_style_step():
    """accum 1: model -> ClipLoss -> backward -> clip -> AdamW -> clamp, as open_clip's train_one_epoch."""
    from open_clip.loss import ClipLoss as OCClipLoss

    ours, ref = _tiny(), _tiny()
    batch = _batch(8)
    opt_ours = create_optimizer(ours, lr=1e-3, fused=False)
    opt_ref = create_optimizer(ref, lr=1e-3, fused=False)
    for _ in range(2):
        res = train_step(ours, batch, ClipLoss(), opt_ours, clip_grad_norm=1.0)
        opt_ref.zero_grad()
        img, txt, scale = ref(*batch)
        loss = OCClipLoss()(img, txt, scale)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt_ref.step()
        with torch.no_grad():
            ref.logit_scale.clamp_(0, math.log(100))
        assert res.loss == pytest.approx(loss.item(), rel=1e-12)
        assert res.grad_norm == pytest.approx(norm.item(), rel=1e-9)
    _assert_same_grads(dict(ours.named_parameters()), dict(ref.named_parameters()), 1e-9, 1e-12)


def test_step_schedules_clamps_and_reports():
    model = _tiny(dtype=torch.float32)
    model.logit_scale.data.fill_(MAX_LOGIT_SCALE - 1e-3)
    opt = create_optimizer(model, lr=0.5)
    sched = build_scheduler(opt, "cosine", warmup_steps=2, total_steps=10)
    first = train_step(model, _batch(4, torch.float32), ClipLoss(), opt, sched, clip_grad_norm=0.5)
    second = train_step(model, _batch(4, torch.float32), ClipLoss(), opt, sched)
    assert (first.lr, second.lr) == pytest.approx((0.25, 0.5))  # warmup (s + 1) / 2, used then stepped
    assert model.logit_scale.item() <= MAX_LOGIT_SCALE  # huge LR pushed it up; clamped after the step
    assert first.logit_scale == pytest.approx(math.exp(MAX_LOGIT_SCALE - 1e-3), rel=1e-5)
    assert first.logit_bias is None and math.isfinite(first.loss) and first.grad_norm > 0


def test_siglip_step_reports_bias_and_bf16_autocast_runs():
    model = _tiny("siglip-tiny", torch.float32)
    res = train_step(model, _batch(4, torch.float32), SigLipLoss(), create_optimizer(model, lr=1e-4),
                     autocast_dtype=torch.bfloat16, accum_steps=2)
    assert res.logit_bias == pytest.approx(-10.0, abs=1e-3)
    assert res.logit_scale == pytest.approx(10.0, rel=1e-2) and math.isfinite(res.loss)


def test_non_finite_gradients_skip_the_update():
    model = _tiny(dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images, texts = _batch(4, torch.float32)
    images[0, 0, 0, 0] = float("nan")
    res = train_step(model, (images, texts), ClipLoss(), create_optimizer(model, lr=1e-3))
    assert res.skipped and not math.isfinite(res.grad_norm)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_batch_that_does_not_split_is_a_config_error():
    model = _tiny(dtype=torch.float32)
    with pytest.raises(ConfigError, match="accum_steps"):
        train_step(model, _batch(6, torch.float32), ClipLoss(), create_optimizer(model), accum_steps=4)


# ---------------------------------------------------------------------------------------------------
# DDP with accumulation: 2 gloo ranks x 2 micro-batches == one process with the global batch.

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Adapter(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images, texts):
        return self.inner(images, texts)


def _ddp_worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ref = _tiny()
        ref_opt = create_optimizer(ref, lr=1e-3, fused=False)
        # DDP behind an adapter (as the loop's multi-caption wrapper): train_step must still find it.
        model = _Adapter(DDP(_tiny()))
        opt = create_optimizer(model, lr=1e-3, fused=False)
        rows = slice(rank * 4, (rank + 1) * 4)
        for seed in (1, 2):  # a second step: DDP's reducer must be in a clean state after the first
            images, texts = _batch(8, seed=seed)
            train_step(ref, (images, texts), ClipLoss(world_size=1, rank=0), ref_opt)
            train_step(model, (images[rows], texts[rows]), ClipLoss(), opt, accum_steps=2)
            got = {n.removeprefix("inner.module."): g for n, g in _grads(model).items()}
            _assert_same_grads(_grads(ref), got, rtol=1e-8, atol=1e-11)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip teardown: gloo threads can abort it (pytorch/pytorch#179291)


def test_ddp_accumulation_matches_single_process(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_ddp_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_grad_scaler_path_matches_unscaled_step_and_skips_overflow():
    plain, scaled = _tiny(dtype=torch.float32), _tiny(dtype=torch.float32)
    batch = _batch(4, torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    a = train_step(plain, batch, ClipLoss(), create_optimizer(plain, lr=1e-3, fused=False), clip_grad_norm=1.0)
    b = train_step(scaled, batch, ClipLoss(), create_optimizer(scaled, lr=1e-3, fused=False), scaler=scaler,
                   clip_grad_norm=1.0)
    # Power-of-two scaling is exact: unscaled gradients, norm and update are the same.
    assert not b.skipped and b.grad_norm == pytest.approx(a.grad_norm, rel=1e-6)
    _assert_same_grads(_grads(plain), _grads(scaled), rtol=1e-6, atol=1e-9)
    images, texts = batch
    images = images.clone()
    images[0, 0, 0, 0] = float("inf")
    before = {n: p.detach().clone() for n, p in scaled.named_parameters()}
    res = train_step(scaled, (images, texts), ClipLoss(), create_optimizer(scaled, lr=1e-3), scaler=scaler)
    assert res.skipped and scaler.get_scale() == 2.0**9
    assert all(torch.equal(p, before[n]) for n, p in scaled.named_parameters())
