"""Optimizer groups, LR schedules and grad clipping, checked against open_clip's rules and torch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clipstack.errors import ConfigError
from clipstack.train.optim import (
    LRMultiplier,
    build_scheduler,
    clip_grad_norm,
    create_optimizer,
    no_weight_decay,
    param_groups,
)


class _Standin(nn.Module):
    """The parameter kinds a CLIP tower has, under open_clip's names."""

    def __init__(self) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(50, 16)
        self.positional_embedding = nn.Parameter(torch.randn(8, 16))
        self.class_embedding = nn.Parameter(torch.randn(16))
        self.conv1 = nn.Conv2d(3, 16, 4, bias=False)
        self.ln_pre = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)
        self.text_projection = nn.Parameter(torch.randn(16, 8))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _names(groups):
    return [set(g["names"]) for g in groups]


def test_param_groups_exclude_gains_biases_embeddings_temperature():
    no_decay, decay = _names(param_groups(_Standin(), 0.1))
    assert decay == {"conv1.weight", "fc.weight", "text_projection"}
    assert no_decay == {
        "token_embedding.weight", "positional_embedding", "class_embedding", "ln_pre.weight",
        "ln_pre.bias", "fc.bias", "logit_scale", "logit_bias",
    }
    assert not any(n.startswith("frozen") for n in no_decay | decay)  # LiT: frozen tower left out


def test_rule_extends_open_clip_exclude_by_embeddings_only():
    from open_clip.model import CLIP as OCCLIP

    model = OCCLIP(
        embed_dim=16,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        text_cfg={"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    )

    def oc_exclude(n, p):  # open_clip_train/main.py
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(model.named_parameters())
    oc_no_decay = {n for n, p in named if oc_exclude(n, p)}
    ours_no_decay, _ = _names(param_groups(model, 0.2))
    assert oc_no_decay <= ours_no_decay
    assert ours_no_decay - oc_no_decay == {"positional_embedding", "token_embedding.weight",
                                           "visual.positional_embedding"}
    assert no_weight_decay("visual.proj", torch.zeros(4, 4)) is False


def test_create_optimizer_defaults_and_errors():
    model = _Standin()
    opt = create_optimizer(model, lr=1e-3, weight_decay=0.2)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.2]
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    with pytest.raises(ConfigError, match="optim.lr"):
        create_optimizer(model, lr=0.0)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        create_optimizer(frozen)


def test_fused_and_foreach_adamw_take_the_same_step():
    torch.manual_seed(0)
    a, b = _Standin(), _Standin()
    b.load_state_dict(a.state_dict())
    opt_a = create_optimizer(a, lr=1e-2, fused=None)
    opt_b = create_optimizer(b, lr=1e-2, fused=False)
    x = torch.randn(4, 16)
    for model, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(3):
            opt.zero_grad()
            (model.fc(x).square().mean() + model.logit_scale * model.text_projection.sum()).backward()
            opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=n)


@pytest.mark.parametrize(
    "kind,extra",
    [("cosine", {}), ("const", {}), ("const-cooldown", {"cooldown_steps": 10, "cooldown_power": 2.0})],
)
def test_schedules_match_open_clip(kind, extra):
    from open_clip_train import scheduler as oc

    base, warmup, total = 1e-3, 7, 40
    model = nn.Linear(2, 2)
    ours_opt = torch.optim.AdamW(model.parameters(), lr=base)
    ours = build_scheduler(ours_opt, kind, warmup_steps=warmup, total_steps=total, **extra)
    ref_opt = torch.optim.AdamW(model.parameters(), lr=base)
    factory = {"cosine": oc.cosine_lr, "const": oc.const_lr, "const-cooldown": oc.const_lr_cooldown}[kind]
    ref = factory(ref_opt, base, warmup, total, *extra.values())
    for step in range(total):
        expected = ref(step)
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15), step
        ours_opt.step()
        ours.step()


def test_scheduler_resumes_from_state_dict_and_keeps_group_lrs():
    model = _Standin()
    opt = create_optimizer(model, lr=1e-3)
    opt.param_groups[0]["lr"] = opt.param_groups[0]["initial_lr"] = 5e-4  # a group with its own base LR
    sched = build_scheduler(opt, "cosine", warmup_steps=3, total_steps=20, min_ratio=0.1)
    for _ in range(9):
        opt.step()
        sched.step()
    state = sched.state_dict()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] == pytest.approx(lrs[1] / 2)
    opt2 = create_optimizer(model, lr=1e-3)
    opt2.param_groups[0]["lr"] = opt2.param_groups[0]["initial_lr"] = 5e-4
    sched2 = build_scheduler(opt2, "cosine", warmup_steps=3, total_steps=20, min_ratio=0.1)
    sched2.load_state_dict(state)
    for _ in range(11):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-4)  # floor: min_ratio * base at the end


def test_schedule_validation_names_fields():
    with pytest.raises(ConfigError, match="schedule.kind"):
        LRMultiplier("linear", 0, 10)
    with pytest.raises(ConfigError, match="total_steps"):
        LRMultiplier("cosine", 2, 0)
    with pytest.raises(ConfigError, match="schedule.cooldown_steps"):
        LRMultiplier("const-cooldown", 5, 10, cooldown_steps=8)


def _grads_for(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 3


def test_clip_grad_norm_matches_torch():
    a, b = _Standin(), _Standin()
    _grads_for(a, 1)
    _grads_for(b, 1)
    norm = clip_grad_norm(a, max_norm=1.0)
    ref = torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    assert norm == pytest.approx(float(ref), rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    # Without a limit: the norm is reported, the gradients are untouched.
    _grads_for(a, 2)
    before = [p.grad.clone() for p in a.parameters()]
    assert clip_grad_norm(a) > 1.0
    assert all(torch.equal(p.grad, q) for p, q in zip(a.parameters(), before))


def test_clip_grad_norm_leaves_non_finite_gradients_for_the_caller():
    model = nn.Linear(3, 3)
    _grads_for(model, 3)
    model.weight.grad[0, 0] = float("inf")
    bias_before = model.bias.grad.clone()
    assert math.isinf(clip_grad_norm(model, max_norm=1.0))
    assert torch.equal(model.bias.grad, bias_before)
