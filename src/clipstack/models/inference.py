"""Faster fp32 CPU inference: run every linear layer through oneDNN (mkldnn) instead of the BLAS default.

PyTorch's fp32 `F.linear` on CPU calls MKL's sgemm. On CPUs MKL does not tune for (AMD EPYC here) that
runs at about half the speed of oneDNN's kernels: 96 vs 197 GFLOP/s per core for a ViT-B MLP layer,
which makes ViT-B-32 `encode_image` ~2x faster end to end (docs/BENCHMARKS.md). `pack_for_inference`
gives each `nn.Linear`, and the fused QKV projection of each attention layer, a copy of its weights in
oneDNN's layout and routes the forward through it. The parameters themselves are untouched, so
`state_dict()`, checkpoints and weight fingerprints are those of the original model; outputs agree to
float rounding (~1e-6).

For frozen inference only: the packed copies do not see later weight updates and have no autograd.
Used by `clipstack eval`, `clipstack embed` and the search server on CPU in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipstack.models.onednn import ATTR as _ATTR
from clipstack.models.onednn import _mkldnn, _servable, clear_override, linear_layers, set_override
from clipstack.models.onednn import onednn_available as packing_available

__all__ = ["pack_for_inference", "unpack_inference", "is_packed", "packing_available"]


class _OneDNNLinear:
    """`F.linear` through oneDNN with the weight kept in oneDNN's layout; a plain callable, not a module."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.dense_weight, self.dense_bias = weight, bias
        with torch.no_grad():
            self.weight = _mkldnn(weight.detach())
            self.bias = _mkldnn(bias.detach() if bias is not None else torch.zeros(weight.shape[0]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not _servable(x, self.dense_weight):  # e.g. under bf16 autocast: the usual (bf16) path
            return F.linear(x, self.dense_weight, self.dense_bias)
        return torch._C._nn.mkldnn_linear(x.contiguous().to_mkldnn(), self.weight, self.bias).to_dense()


def pack_for_inference(model: nn.Module) -> nn.Module:
    """Pack `model`'s linear layers for oneDNN in place (fp32 CPU parameters only) and return it.

    A no-op where packing does not apply: oneDNN unavailable or switched off, parameters not fp32 or
    not on the CPU. Puts the model in eval mode.
    """
    model.eval()
    if not packing_available():
        return model
    for module, weight_name, bias_name in linear_layers(model):
        weight = getattr(module, weight_name)
        if weight.device.type == "cpu" and weight.dtype == torch.float32:
            set_override(module, _OneDNNLinear(weight, getattr(module, bias_name)))
    return model


def unpack_inference(model: nn.Module) -> nn.Module:
    """Undo `pack_for_inference` (before training or changing weights again)."""
    for module, _, _ in linear_layers(model):
        clear_override(module, _OneDNNLinear)
    return model


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m.__dict__.get(_ATTR), _OneDNNLinear) for m, _, _ in linear_layers(model))
