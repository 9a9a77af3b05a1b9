"""Transformer building blocks shared by the vision and text towers.

Parameter names follow OpenCLIP exactly (`ln_1`, `attn.in_proj_weight`, `attn.out_proj`, `mlp.c_fc`,
`mlp.c_proj`, `ls_1.gamma`), so public OpenCLIP checkpoints load unchanged. Attention keeps the fused
`in_proj_weight` layout but runs through `F.scaled_dot_product_attention`, which picks a fused kernel and
handles causal masking without materializing a mask.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class TowerOutput(NamedTuple):
    """What a tower's `forward_features` returns; later heads (FILIP, FDT, NaViT) build on it."""

    tokens: torch.Tensor  # [B, N, width] final-normalized token features (before projection)
    mask: torch.Tensor  # [B, N] bool, True where the token is real (not padding)
    pooled: torch.Tensor  # [B, embed_dim] projected pooled embedding (what encode_* returns)


class LayerNorm(nn.LayerNorm):
    """LayerNorm that returns the input dtype (under autocast F.layer_norm may return fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid GELU approximation OpenAI's CLIP was trained with (its weights need it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """Per-channel residual scale (CaiT); parameter `gamma` as in OpenCLIP."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV projection.

    `attn_mask` is either a bool mask broadcastable to [B, heads, N, N] (True = may attend) or an additive
    float mask; `is_causal` adds the causal constraint. With `n_queries`, only the first n tokens get an
    output (they still attend to all tokens): a pooled forward needs just the class token at the end.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # the same init nn.MultiheadAttention uses, so a fresh model trains like an OpenCLIP one
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
        n_queries: int | None = None,
    ) -> torch.Tensor:
        B, N, C = x.shape
        # An instance override (models.onednn / models.inference) runs the projection on oneDNN.
        override = self.__dict__.get("linear_override")
        qkv = override(x) if override is not None else F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if n_queries is not None:
            if is_causal:
                raise ValueError("n_queries with a causal mask is not supported")
            q = q[:, :, :n_queries]
            attn_mask = attn_mask[..., :n_queries, :] if attn_mask is not None and attn_mask.dim() > 1 else attn_mask
            N = n_queries
        if is_causal and attn_mask is not None:  # SDPA takes one or the other: fold causality in
            causal = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
            attn_mask = causal & attn_mask if attn_mask.dtype == torch.bool else attn_mask.masked_fill(
                ~causal, float("-inf"))
            is_causal = False
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    """Two-layer feed-forward block; names `c_fc`/`c_proj` match OpenCLIP's checkpoint keys."""

    def __init__(self, width: int, hidden: int, act_layer: type[nn.Module]):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = act_layer()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), optional layer scale."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        ls_init_value: float | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, heads)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act_layer)
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
        n_queries: int | None = None,
    ) -> torch.Tensor:
        """With `n_queries`, returns only the first n tokens' outputs (see Attention)."""
        attn = self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal, n_queries=n_queries)
        x = x[:, :n_queries] + self.ls_1(attn)
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of residual blocks (`resblocks.{i}`), batch-first, with optional grad checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, **block_kwargs):
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads, **block_kwargs) for _ in range(layers))

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
        last_queries: int | None = None,
    ) -> torch.Tensor:
        """`last_queries=n`: the last block computes only the first n tokens (e.g. the class token)."""
        for i, block in enumerate(self.resblocks):
            n_queries = last_queries if i == len(self.resblocks) - 1 else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, is_causal, n_queries, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=is_causal, n_queries=n_queries)
        return x


def act_layer_for(quick_gelu: bool) -> type[nn.Module]:
    """OpenAI-trained weights need QuickGELU; everything else uses exact GELU."""
    return QuickGELU if quick_gelu else nn.GELU
