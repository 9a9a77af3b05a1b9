"""The ResNet vision tower: CLIP's ModifiedResNet (RN50, RN101, RN50x4... and tiny CPU variants).

image [B,3,H,W] -> 3-conv stem (stride 2) -> avgpool 2 -> four stages of bottleneck blocks (stages 2-4
downsample by 2 with an average pool, not a strided conv) -> attention pooling: the mean feature is the
query over all positions -> [B, embed_dim]. The feature map is H/32 x W/32.

A convolutional tower learns small-image spatial structure (shape, position) from far less data than a
ViT of the same cost, which is what a few CPU minutes on 32-64 px images can afford.

Keys match OpenCLIP's `ModifiedResNet` (`visual.conv1.weight`, `visual.layer1.0.bn3.weight`,
`visual.attnpool.q_proj.weight`...), so OpenAI's RN checkpoints load and ours load in open_clip.
BatchNorm statistics are per process under DDP unless `distributed.sync_batchnorm` is set (OpenCLIP's
`--use-bn-sync`; see clipstack.train.distributed).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipstack.models.config import VisionCfg
from clipstack.models.layers import TowerOutput
from clipstack.models.vision import _pair


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avgpool) -> 1x1 (x4 channels), with an average-pooled shortcut when it downsamples."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != out:
            # "-1" is OpenCLIP's (and OpenAI's) key for the pool, so checkpoints line up
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                ("1", nn.BatchNorm2d(out)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        return self.act3(y + identity)


class AttentionPool2d(nn.Module):
    """Multi-head attention over [mean; positions] of the feature map; the mean token's output is the
    embedding. Separate q/k/v/c projections (OpenCLIP's keys), called as modules so CPU inference
    packing (models.inference) reaches them."""

    def __init__(self, spatial: tuple[int, int], width: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial[0] * spatial[1] + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)
        self.num_heads = heads

    def forward(self, x: torch.Tensor, all_tokens: bool = False) -> torch.Tensor:
        """x [B,C,H,W] -> [B, output_dim], or with `all_tokens` every position's output [B, 1+HW, out]."""
        if x.shape[2] * x.shape[3] + 1 != self.positional_embedding.shape[0]:
            raise ValueError(f"feature map {tuple(x.shape[2:])} does not match the attention pool's "
                             f"{self.positional_embedding.shape[0] - 1} positions; use the model's image size")
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        b, n, c = x.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, h, c // h).transpose(1, 2)

        queries = x if all_tokens else x[:, :1]
        out = F.scaled_dot_product_attention(heads(self.q_proj(queries)), heads(self.k_proj(x)),
                                             heads(self.v_proj(x)))
        out = self.c_proj(out.transpose(1, 2).reshape(b, -1, c))
        return out if all_tokens else out[:, 0]


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: VisionCfg, embed_dim: int):
        super().__init__()
        layers, width = list(cfg.layers), cfg.width
        if len(layers) != 4:
            raise ValueError(f"vision_cfg.layers={layers}: a ResNet tower has four stages")
        self.image_size = _pair(cfg.image_size)
        self.grid_size = (self.image_size[0] // 32, self.image_size[1] // 32)
        self.output_dim = embed_dim
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))

        self.attnpool = AttentionPool2d(self.grid_size, width * 32, width * 32 // cfg.head_width, embed_dim)
        self._frozen_bn: list[nn.Module] = []
        self._init_parameters()

    def _init_parameters(self) -> None:
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in self.stages():
            for name, param in stage.named_parameters():
                if name.endswith("bn3.weight"):  # each residual branch starts as the identity
                    nn.init.zeros_(param)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _feature_map(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(image.shape[-2:])} but the model takes {self.image_size}; "
                             "use the model's preprocess (or create_model(..., image_size=...))")
        x = self.act1(self.bn1(self.conv1(image.to(self.conv1.weight.dtype))))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.act3(self.bn3(self.conv3(x))))
        for stage in self.stages():
            for block in stage:
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        return x

    def forward_features(self, image: torch.Tensor, attn_mask: torch.Tensor | None = None) -> TowerOutput:
        """Tokens: the attention pool's output at [mean; every position] (token 0 is the embedding), a mask
        (all True) and the pooled embedding."""
        if attn_mask is not None:
            raise ValueError("a ResNet tower takes whole images; attn_mask (sequence packing) needs a ViT")
        tokens = self.attnpool(self._feature_map(image), all_tokens=True)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TowerOutput(tokens=tokens, mask=mask, pooled=tokens[:, 0])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.attnpool(self._feature_map(image))

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze the tower (LiT), leaving the last `unlocked_groups` groups trainable: the stem, each
        stage, and the attention pool. Frozen groups also keep their BatchNorm statistics fixed."""
        stem = nn.ModuleList([self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3])
        groups = [stem, *self.stages(), self.attnpool]
        frozen = groups[:len(groups) - unlocked_groups] if unlocked_groups > 0 else groups
        for p in self.parameters():
            p.requires_grad = False
        for group in groups[len(frozen):]:
            for p in group.parameters():
                p.requires_grad = True
        self._frozen_bn = [m for g in frozen for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
        self.train(self.training)

    def train(self, mode: bool = True) -> ModifiedResNet:
        super().train(mode)
        for bn in self._frozen_bn:
            bn.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
