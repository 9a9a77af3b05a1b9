"""fp32 linear layers through oneDNN for CPU training: forward and backward GEMMs on oneDNN's kernels.

PyTorch's CPU fp32 `F.linear` and its backward call MKL's sgemm, which on CPUs MKL does not tune for
(AMD EPYC here) runs at about half of oneDNN's speed. `use_onednn(model)` routes the model's large
linear layers (both sides >= `min_features`; at width 64 the conversions cost more than they save)
through an autograd function whose three GEMMs (y = x W^T + b, dx = dy W, dW = dy^T x) run on oneDNN.
ViT-B-32's training step is ~1.9x faster here (docs/BENCHMARKS.md); results match `F.linear` to float
rounding (~1e-6 relative), and a run is as deterministic as before.

The parameters stay ordinary tensors, so optimizers, DDP, checkpoints and `state_dict()` are untouched.
Any call the function cannot serve (autocast active, non-fp32 or non-CPU tensors, torch.compile
tracing) takes the usual `F.linear` path. `clipstack train` turns this on by default on CPU in fp32
(`precision.onednn`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["onednn_available", "use_onednn", "onednn_linear", "ATTR"]

ATTR = "linear_override"  # instance attribute: nn.Linear's forward, Attention's fused QKV projection


def onednn_available() -> bool:
    """oneDNN is built in, and not switched off (`CLIPSTACK_NO_ONEDNN=1` or `torch.backends.mkldnn`)."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and os.environ.get("CLIPSTACK_NO_ONEDNN", "") in ("", "0"))


def _mkldnn(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().to_mkldnn()


def _gemm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b_t.T (+ bias) on oneDNN; a [M, K], b_t [N, K], dense in and out."""
    if bias is None:
        bias = torch.zeros(b_t.shape[0], dtype=a.dtype)
    return torch._C._nn.mkldnn_linear(_mkldnn(a), _mkldnn(b_t), _mkldnn(bias)).to_dense()


class _OneDNNLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = _gemm(x.reshape(-1, x.shape[-1]), weight.detach(), None if bias is None else bias.detach())
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        grad_x = _gemm(g, weight.t()).view(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = _gemm(g.t(), x2.t()) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _servable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and type(weight) in (torch.Tensor, nn.Parameter) and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and x.numel() > 0)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` on oneDNN where it can be, else `F.linear` itself."""
    if _servable(x, weight):
        return _OneDNNLinearFn.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class _Route:
    """The replacement forward of one layer; reads the parameters at call time, so updates are seen."""

    def __init__(self, module: nn.Module, weight: str, bias: str) -> None:
        self.module, self.weight, self.bias = module, weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, getattr(self.module, self.weight), getattr(self.module, self.bias))


def linear_layers(model: nn.Module):
    """Yield (module, weight name, bias name) for every nn.Linear and every attention's fused QKV."""
    from clipstack.models.layers import Attention

    for module in model.modules():
        if isinstance(module, nn.Linear):
            yield module, "weight", "bias"
        elif isinstance(module, Attention):
            yield module, "in_proj_weight", "in_proj_bias"


def set_override(module: nn.Module, forward) -> None:
    """Make `forward` the layer's linear map. Plain attributes, not submodules: parameters and
    state_dict() stay the model's own."""
    object.__setattr__(module, ATTR, forward)
    if isinstance(module, nn.Linear):
        object.__setattr__(module, "forward", forward)


def clear_override(module: nn.Module, kind: type) -> None:
    """Remove the layer's override if it is a `kind` (so packing and routing do not undo each other)."""
    if isinstance(module.__dict__.get(ATTR), kind):
        del module.__dict__[ATTR]
        module.__dict__.pop("forward", None)


def use_onednn(model: nn.Module, enabled: bool = True, min_features: int = 256) -> int:
    """Route (or, with `enabled=False`, un-route) the large linear layers; return how many are routed."""
    routed = 0
    for module, weight, bias in linear_layers(model):
        if not enabled or not onednn_available() or min(getattr(module, weight).shape) < min_features:
            clear_override(module, _Route)
            continue
        set_override(module, _Route(module, weight, bias))
        routed += 1
    return routed
