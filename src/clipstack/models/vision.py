"""The vision tower: a ViT that turns an image batch into one embedding per image.

image [B,3,H,W] -> conv1 patches -> [class token; patches] + positions -> (patch dropout) -> ln_pre
-> transformer -> ln_post -> pool (class token or mean) -> @ proj -> [B, embed_dim].

Keys match OpenCLIP's `VisionTransformer` (`visual.conv1.weight`, `visual.class_embedding`, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from clipstack.models.config import VisionCfg
from clipstack.models.layers import LayerNorm, TowerOutput, Transformer


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class PatchDropout(nn.Module):
    """Drop a random subset of patch tokens while training (FLIP); the class token always stays."""

    def __init__(self, prob: float):
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        cls_token, patches = x[:, :1], x[:, 1:]
        keep = max(1, int(patches.shape[1] * (1 - self.prob)))
        idx = torch.rand(patches.shape[:2], device=x.device).argsort(dim=1)[:, :keep]
        patches = torch.gather(patches, 1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return torch.cat([cls_token, patches], dim=1)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionCfg, embed_dim: int, act_layer: type[nn.Module]):
        super().__init__()
        self.image_size = _pair(cfg.image_size)
        self.patch_size = _pair(cfg.patch_size)
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.pool_type = cfg.pool_type
        self.final_ln_after_pool = cfg.final_ln_after_pool
        self.output_dim = embed_dim
        width, eps = cfg.width, cfg.norm_kwargs.get("eps", 1e-5)

        self.conv1 = nn.Conv2d(3, width, kernel_size=self.patch_size, stride=self.patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size[0] * self.grid_size[1] + 1,
                                                                     width))
        self.patch_dropout = PatchDropout(cfg.patch_dropout) if cfg.patch_dropout > 0 else nn.Identity()
        self.ln_pre = nn.Identity() if cfg.no_ln_pre else LayerNorm(width, eps=eps)
        self.transformer = Transformer(
            width, cfg.layers, width // cfg.head_width, mlp_ratio=cfg.mlp_ratio,
            ls_init_value=cfg.ls_init_value, act_layer=act_layer, norm_eps=eps,
        )
        self.ln_post = LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Patchify and add the class token and positions: [B,3,H,W] -> [B, 1 + grid, width]."""
        if tuple(image.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(image.shape[-2:])} but the model takes {self.image_size}; "
                             "use the model's preprocess (or create_model(..., image_size=...))")
        x = self.conv1(image).flatten(2).transpose(1, 2)
        cls_token = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_token, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(self.patch_dropout(x))

    def forward_features(self, image: torch.Tensor, attn_mask: torch.Tensor | None = None) -> TowerOutput:
        """Token features (class token first), a mask (all True: images have no padding) and the
        projected pooled embedding. `attn_mask` [B,N,N] bool restricts attention (packed sequences)."""
        x = self.transformer(self.embed(image), attn_mask=_heads_dim(attn_mask))
        if not self.final_ln_after_pool:
            x = self.ln_post(x)
        pooled = x[:, 1:].mean(dim=1) if self.pool_type == "avg" else x[:, 0]
        if self.final_ln_after_pool:
            pooled = self.ln_post(pooled)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return TowerOutput(tokens=x, mask=mask, pooled=pooled @ self.proj)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The pooled embedding. Class-token pooling reads one token of the last block's output, so that
        block updates only the class token (same result, a block's worth of MLP work saved)."""
        if self.pool_type != "tok":
            return self.forward_features(image).pooled
        x = self.transformer(self.embed(image), last_queries=1)[:, 0]
        return self.ln_post(x) @ self.proj

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze the tower (LiT), leaving the last `unlocked_groups` groups trainable: groups are the
        embeddings, each block, the last block with ln_post, and the projection."""
        for p in self.parameters():
            p.requires_grad = False
        if unlocked_groups <= 0:
            return
        blocks = list(self.transformer.resblocks)
        groups = [[self.conv1, self.class_embedding, self.positional_embedding, self.ln_pre],
                  *[[b] for b in blocks[:-1]], [blocks[-1], self.ln_post], [self.proj]]
        for group in groups[-unlocked_groups:]:
            for item in group:
                params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
                for p in params:
                    p.requires_grad = True

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable


def _heads_dim(attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A per-sample [B,N,N] mask gets a heads axis so it broadcasts over heads in attention."""
    return attn_mask.unsqueeze(1) if attn_mask is not None and attn_mask.dim() == 3 else attn_mask
