"""Contrastive losses: CLIP InfoNCE and SigLIP sigmoid loss, single-process and distributed.

Both losses follow open_clip's conventions so a rank's loss and gradients match open_clip's `ClipLoss` /
`SigLipLoss` on the same features. Under data parallelism each rank returns its *local* loss; the mean
of the ranks' losses equals the loss of the global batch, and after DDP averages the parameter gradients
they equal the gradients of the global-batch loss (for `ClipLoss` this needs `gather_with_grad=True`,
the default here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ClipLoss",
    "SigLipLoss",
    "clamp_logit_scale_",
    "build_loss",
    "MAX_LOGIT_SCALE",
]

# ln(100): CLIP caps the temperature at 100 so the logits cannot blow up (Radford et al. 2021).
MAX_LOGIT_SCALE = math.log(100.0)


def _dist_info(rank: int | None, world_size: int | None, group) -> tuple[int, int]:
    """Rank and world size: explicit values win, else the initialized process group, else (0, 1)."""
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size(group) if initialized else 1
    if rank is None:
        rank = dist.get_rank(group) if initialized else 0
    return rank, world_size


@torch.no_grad()
def clamp_logit_scale_(model: nn.Module, max_value: float = MAX_LOGIT_SCALE, min_value: float = 0.0) -> None:
    """Clamp `model.logit_scale` (log-space) in place to [min_value, max_value].

    Done on the parameter after the optimizer step rather than inside the loss, as CLIP and open_clip
    do: clamping inside the forward would zero the gradient at the cap and freeze the temperature there.
    Unwraps DDP/compiled wrappers (`.module`, `._orig_mod`).
    """
    inner = model
    for attr in ("module", "_orig_mod"):
        while hasattr(inner, attr) and not hasattr(inner, "logit_scale"):
            inner = getattr(inner, attr)
    scale = getattr(inner, "logit_scale", None)
    if isinstance(scale, Tensor):
        scale.clamp_(min_value, max_value)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient for this rank's slice.

    Backward is a reduce-scatter on NCCL and an all-reduce plus slice elsewhere (gloo has no
    reduce-scatter). Requires the same local batch size on every rank.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group, rank: int, world_size: int) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.group, ctx.rank, ctx.world_size = group, rank, world_size
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous()
        rows = grad.shape[0] // ctx.world_size
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            out = grad.new_empty((rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, group=ctx.group)
        else:
            total = grad.clone()  # the incoming gradient may be shared: never reduce it in place
            dist.all_reduce(total, group=ctx.group)
            out = total[ctx.rank * rows : (ctx.rank + 1) * rows]
        return out, None, None, None


def _gather(tensor: Tensor, world_size: int, rank: int, with_grad: bool, group) -> Tensor:
    """All-gather along dim 0. Without grad, the local slot keeps the local (grad-carrying) tensor."""
    import torch.distributed as dist

    if with_grad:
        return _GatherWithGrad.apply(tensor, group, rank, world_size)
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    parts[rank] = tensor
    return torch.cat(parts, dim=0)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE (CLIP): mean of image->text and text->image cross-entropies.

    Distributed (world_size > 1) features are all-gathered. `local_loss=True` computes only this rank's
    rows of the logit matrix against all columns (B_local x B_global memory instead of B_global^2);
    `gather_with_grad=True` back-propagates through the gather so every rank's features receive the
    gradient from every rank's rows. With both on, the DDP-averaged gradients equal the global-batch
    loss's gradients. open_clip's defaults (both off) give the global loss value on every rank but
    gradients scaled by 1/world_size; they are kept available for parity.
    """

    def __init__(
        self,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        cache_labels: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        group=None,
    ) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank, self.world_size = _dist_info(rank, world_size, group)
        self.group = group
        self._labels: dict[tuple[torch.device, int], Tensor] = {}

    def labels(self, device: torch.device, num_rows: int) -> Tensor:
        key = (device, num_rows)
        cached = self._labels.get(key)
        if cached is not None:
            return cached
        offset = num_rows * self.rank if (self.world_size > 1 and self.local_loss) else 0
        labels = torch.arange(offset, offset + num_rows, device=device, dtype=torch.long)
        if self.cache_labels:
            self._labels[key] = labels
        return labels

    def logits(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor | None = None,
        negatives: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(logits_per_image, logits_per_text) as this rank sees them.

        `negatives` (one hard-negative text per image, e.g. a word-swapped caption) become extra columns
        of the image->text logits after the B true texts, as in NegCLIP; the text->image side is unchanged.
        """
        distributed = self.world_size > 1
        if distributed:
            all_img = _gather(image_features, self.world_size, self.rank, self.gather_with_grad, self.group)
            all_txt = _gather(text_features, self.world_size, self.rank, self.gather_with_grad, self.group)
        else:
            all_img, all_txt = image_features, text_features
        columns = all_txt
        if negatives is not None:
            all_neg = (_gather(negatives, self.world_size, self.rank, self.gather_with_grad, self.group)
                       if distributed else negatives)
            columns = torch.cat([all_txt, all_neg])
        if distributed and self.local_loss:
            per_image = logit_scale * image_features @ columns.T
            per_text = logit_scale * text_features @ all_img.T
        else:
            # One GEMM: the text->image logits are the transpose of the first B image->text columns.
            per_image = logit_scale * all_img @ columns.T
            per_text = per_image[:, : all_txt.shape[0]].T
        if logit_bias is not None:
            per_image = per_image + logit_bias
            if distributed and self.local_loss:
                per_text = per_text + logit_bias
            else:
                per_text = per_image[:, : all_txt.shape[0]].T
        return per_image, per_text

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
        output_dict: bool = False,
        negatives: Tensor | None = None,
    ) -> Tensor | dict[str, Tensor]:
        per_image, per_text = self.logits(image_features, text_features, logit_scale, logit_bias, negatives)
        labels = self.labels(image_features.device, per_image.shape[0])
        loss = (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
        return {"contrastive_loss": loss} if output_dict else loss


class _Exchange(torch.autograd.Function):
    """Point-to-point exchange with autograd: tensor k goes to dsts[k], result k comes from srcs[k].

    The backward is the mirror exchange: the gradient of a received tensor goes back to its source,
    and the gradient of a sent tensor arrives from its destination.
    """

    @staticmethod
    def forward(ctx, group, dsts: tuple[int, ...], srcs: tuple[int, ...], *tensors: Tensor):  # type: ignore[override]
        ctx.group, ctx.dsts, ctx.srcs = group, dsts, srcs
        return _p2p(group, dsts, srcs, tensors)

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        back = _Exchange.apply(ctx.group, ctx.srcs, ctx.dsts, *[g.contiguous() for g in grads])
        return (None, None, None, *back)


def _p2p(group, dsts, srcs, tensors) -> tuple[Tensor, ...]:
    import torch.distributed as dist

    outs = tuple(torch.empty_like(t) for t in tensors)
    ops = [dist.P2POp(dist.isend, t.contiguous(), d, group=group) for t, d in zip(tensors, dsts)]
    ops += [dist.P2POp(dist.irecv, o, s, group=group) for o, s in zip(outs, srcs)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return outs


def _global_rank(group, rank: int) -> int:
    """P2P ops address global ranks; translate a group rank when a sub-group is used."""
    if group is None:
        return rank
    import torch.distributed as dist

    return dist.get_global_rank(group, rank)


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023): every image-text pair is a binary problem.

    loss = -sum_ij log sigmoid(y_ij * (s * <x_i, t_j> + b)) / B with y = +1 on the diagonal, -1 elsewhere.
    Computed without a label matrix as (sum_ij softplus(z_ij) - sum_i z_ii) / B, since
    -log sigmoid(-z) = softplus(z) and -log sigmoid(z) = softplus(z) - z.

    Distributed: text features travel around the ring by neighbour exchange, both directions at once
    (ceil((W-1)/2) rounds), so no rank ever holds more than three text blocks and there is no full
    gather. Each rank's loss covers its images against all texts; the ranks' mean is the global loss.
    """

    def __init__(self, rank: int | None = None, world_size: int | None = None, group=None, bidir: bool = True):
        super().__init__()
        self.rank, self.world_size = _dist_info(rank, world_size, group)
        self.group = group
        self.bidir = bidir

    @staticmethod
    def _pair_loss(img: Tensor, txt: Tensor, scale: Tensor, bias: Tensor | None, positives: bool) -> Tensor:
        logits = scale * img @ txt.T
        if bias is not None:
            logits = logits + bias
        total = F.softplus(logits).sum()
        if positives:
            total = total - logits.diagonal().sum()
        return total / img.shape[0]

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
        output_dict: bool = False,
        negatives: Tensor | None = None,
    ) -> Tensor | dict[str, Tensor]:
        """`negatives`: one hard-negative text per image (e.g. its word-swapped caption), a negative pair
        with its own image only, so it never leaves its rank."""
        loss = self._pair_loss(image_features, text_features, logit_scale, logit_bias, positives=True)
        if negatives is not None:
            own = logit_scale * (image_features * negatives).sum(-1)
            if logit_bias is not None:
                own = own + logit_bias
            loss = loss + F.softplus(own).sum() / image_features.shape[0]
        w = self.world_size
        if w > 1:
            right = _global_rank(self.group, (self.rank + 1) % w)
            left = _global_rank(self.group, (self.rank - 1) % w)
            rounds, rest = divmod(w - 1, 2) if self.bidir else (0, w - 1)
            to_left = to_right = text_features
            for _ in range(rounds):
                # Pass blocks on in the direction they travel: what came from the right moves left.
                from_right, from_left = _Exchange.apply(self.group, (left, right), (right, left), to_left, to_right)
                for block in (from_right, from_left):
                    loss = loss + self._pair_loss(image_features, block, logit_scale, logit_bias, False)
                to_left, to_right = from_right, from_left
            for _ in range(rest):
                (from_left,) = _Exchange.apply(self.group, (right,), (left,), to_right)
                loss = loss + self._pair_loss(image_features, from_left, logit_scale, logit_bias, False)
                to_right = from_left
        return {"contrastive_loss": loss} if output_dict else loss


def build_loss(kind: str, **kwargs) -> nn.Module:
    """`kind` is "clip" (InfoNCE) or "siglip"; kwargs go to the loss class."""
    kinds = {"clip": ClipLoss, "infonce": ClipLoss, "siglip": SigLipLoss, "sigmoid": SigLipLoss}
    if kind not in kinds:
        from clipstack.errors import ConfigError

        raise ConfigError(f"loss: unknown kind {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind](**kwargs)
