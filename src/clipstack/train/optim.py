"""Optimizer and schedule: AdamW with a no-decay group, warmup + cosine/constant LR, grad clipping.

Weight decay is applied only to matrices (linear/conv weights). Gains, biases, norms, embeddings, the
temperature and the SigLIP bias are excluded: decaying them pulls scales and positions toward zero and
hurts contrastive training (open_clip's rule, extended to embeddings as in CLIP's reference setup).
Schedules are `LambdaLR`s over a picklable multiplier object, so their state round-trips through a
checkpoint and every param group keeps its own base LR.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipstack.errors import ConfigError

__all__ = [
    "no_weight_decay",
    "param_groups",
    "create_optimizer",
    "LRMultiplier",
    "build_scheduler",
    "clip_grad_norm",
]

_NO_DECAY_TOKENS = ("bn", "ln", "bias", "logit_scale", "embedding", "norm")
_NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def no_weight_decay(name: str, param: Tensor, module: nn.Module | None = None) -> bool:
    """True for parameters that take no weight decay.

    open_clip's rule (ndim < 2, or the name contains bn / ln / bias / logit_scale) plus embeddings
    (token, positional and class embeddings, any `nn.Embedding`) and any norm layer's parameters.
    """
    leaf = name.lower()
    return (
        param.ndim < 2
        or any(tok in leaf for tok in _NO_DECAY_TOKENS)
        or isinstance(module, _NO_DECAY_MODULES)
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and the rest. Frozen parameters (LiT) are left out."""
    owner = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if no_weight_decay(name, p, owner.get(name)):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
    ]


def create_optimizer(
    model: nn.Module,
    lr: float = 5e-4,
    weight_decay: float = 0.2,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over `param_groups`. Defaults are CLIP's ViT settings (betas 0.9/0.98, eps 1e-6, wd 0.2).

    `fused=None` picks the fused kernel whenever the installed torch has it for the parameters' device
    (one kernel per step instead of a loop over tensors); False forces the for-each implementation.
    """
    if lr <= 0:
        raise ConfigError(f"optim.lr: must be > 0, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"optim.weight_decay: must be >= 0, got {weight_decay}")
    groups = [g for g in param_groups(model, weight_decay) if g["params"]]
    if not groups:
        raise ConfigError("optim: the model has no trainable parameters (both towers frozen?)")
    kwargs = dict(lr=lr, betas=betas, eps=eps)
    if fused is not False:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            if fused:
                raise
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


@dataclass
class LRMultiplier:
    """LR multiplier per step: linear warmup, then cosine / constant / constant-then-cooldown.

    Step s of warmup gives (s + 1) / warmup_steps, as open_clip's schedulers do. `min_ratio` is the
    floor that cosine and cooldown decay to (0 = open_clip).
    """

    kind: str
    warmup_steps: int
    total_steps: int
    cooldown_steps: int = 0
    cooldown_power: float = 1.0
    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "const", "const-cooldown"):
            raise ConfigError(f"schedule.kind: unknown {self.kind!r}; expected cosine, const or const-cooldown")
        if self.warmup_steps < 0 or self.total_steps <= 0:
            raise ConfigError(
                f"schedule: warmup_steps ({self.warmup_steps}) must be >= 0 and total_steps "
                f"({self.total_steps}) > 0"
            )
        if self.kind == "const-cooldown" and not 0 < self.cooldown_steps <= self.total_steps - self.warmup_steps:
            raise ConfigError(
                f"schedule.cooldown_steps: {self.cooldown_steps} must be in "
                f"[1, total_steps - warmup_steps = {self.total_steps - self.warmup_steps}]"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "const":
            return 1.0
        lo = self.min_ratio
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            frac = min(1.0, (step - self.warmup_steps) / span)
            return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))
        start = self.total_steps - self.cooldown_steps
        if step < start:
            return 1.0
        frac = min(1.0, (step - start) / self.cooldown_steps)
        return lo + (1.0 - lo) * (1.0 - frac) ** self.cooldown_power


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str = "cosine",
    warmup_steps: int = 0,
    total_steps: int = 1,
    cooldown_steps: int = 0,
    cooldown_power: float = 1.0,
    min_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR`: the LR for step s is set at construction (s=0) and by the s-th `.step()` call."""
    mult = LRMultiplier(kind, warmup_steps, total_steps, cooldown_steps, cooldown_power, min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, mult)


def clip_grad_norm(parameters: Iterable[Tensor] | nn.Module, max_norm: float | None = None) -> float:
    """Total L2 norm of the gradients (before clipping); scale them down to `max_norm` when it is set.

    Always returns the norm so a loop can log it even without clipping. A non-finite norm is returned
    as is and nothing is scaled, so the caller can skip the step with its gradients intact to inspect.
    Same coefficient as `torch.nn.utils.clip_grad_norm_`: max_norm / (norm + 1e-6), capped at 1.
    """
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    grads = [p.grad for p in params]
    # get_total_norm / clip_grads_with_norm_ understand DTensor grads, so FSDP2 gets the global norm.
    total = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False)
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    value = float(total)
    if max_norm is not None and math.isfinite(value):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return value
