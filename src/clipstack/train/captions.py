"""Several captions per image in one step: the model sees B x slots texts, the loss averages the slots.

`data.captions_per_image` k > 1 gives each image k captions (and, with hard negatives, one more slot).
The model wrapper encodes them as B*slots rows; the loss solves one full B x B contrastive problem per
caption slot and averages them, with the hard-negative slot as extra negatives for every slot.
"""

from __future__ import annotations

import torch
from torch import nn


class MultiCaption(nn.Module):
    """Model wrapper for several texts per image: texts [B, slots, ctx] are encoded as B*slots rows."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model  # named like DDP's attribute so unwrapping helpers find the model

    def forward(self, images: torch.Tensor, texts: torch.Tensor):
        return self.module(images, texts.flatten(0, 1))


class MultiCaptionLoss(nn.Module):
    """Mean of the contrastive loss over the k caption slots, each slot a full B x B problem.

    With `negatives`, one more slot follows the k captions: a hard-negative text per image, passed to
    every slot's loss as extra negatives.
    """

    def __init__(self, base: nn.Module, k: int, negatives: bool = False) -> None:
        super().__init__()
        self.base, self.k, self.negatives = base, k, negatives

    def forward(self, image_features, text_features, logit_scale, logit_bias=None):
        slots = self.k + int(self.negatives)
        per_slot = text_features.view(image_features.shape[0], slots, -1)
        extra = {"negatives": per_slot[:, self.k]} if self.negatives else {}
        total = sum(self.base(image_features, per_slot[:, j], logit_scale, logit_bias, **extra)
                    for j in range(self.k))
        return total / self.k
