"""torch.distributed set-up for training: torchrun's environment -> process group, device, wrapped model.

Under `torchrun` (WORLD_SIZE > 1) the process group uses nccl on GPUs and gloo on CPU. The model is
wrapped with DDP, or with FSDP2 (`fully_shard` on every transformer block, then on the whole model) when
`distributed.fsdp` is set; FSDP checkpoints go through torch.distributed.checkpoint (see checkpoint.py).
Without torchrun everything degrades to one process and no wrapping.

`distributed.sync_batchnorm` (OpenCLIP's `--use-bn-sync`) makes BatchNorm layers (ResNet towers) use
statistics over the global batch. torch's `SyncBatchNorm` refuses CPU tensors, so `SyncBatchNorm2d`
here is one differentiable all-reduce of per-channel sums, which works on gloo and nccl alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from clipstack.errors import ConfigError

__all__ = ["DistInfo", "init_distributed", "wrap_model", "all_reduce_mean", "any_rank", "barrier", "cleanup",
           "SyncBatchNorm2d", "sync_batchnorm"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Join torchrun's process group when WORLD_SIZE > 1; pick the device (cuda:LOCAL_RANK or cpu)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("precision.device: cuda requested but torch sees no GPU")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(device=dev)
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl" and not use_cuda:
        raise ConfigError("distributed.backend: nccl needs GPUs; use gloo (or auto) on CPU")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=dev if use_cuda else None)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    device=dev, backend=backend)


def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool = False) -> nn.Module:
    """DDP or FSDP2 around `model` (which must already be on `info.device`); unchanged on one process.

    With FSDP2 the same object is returned, sharded in place (its parameters become DTensors), so the
    optimizer must be created after this call.
    """
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for name, module in model.named_modules():
            if name.endswith("resblocks") and isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block, mesh=mesh)
        # FSDP2 refuses 0-d parameters (logit_scale, logit_bias), and making them 1-d would break the
        # open_clip state_dict format; so they stay replicated plain tensors whose gradient is averaged
        # over ranks as soon as it is accumulated (what DDP would do for them).
        scalars = [p for p in model.parameters() if p.ndim == 0]
        fully_shard(model, mesh=mesh, ignored_params=set(scalars))
        for p in scalars:
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_average_grad)
        return model
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    # Frozen towers (LiT) have requires_grad=False, which DDP skips, so no unused-parameter search.
    return DistributedDataParallel(model, device_ids=ids)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's copy flows back to every input (sum again)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        total = grad.contiguous().clone()  # the incoming gradient may be shared: never reduce it in place
        dist.all_reduce(total)
        return total


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics span every rank of the default process group.

    Same parameters, buffers and state_dict keys as BatchNorm2d; in eval mode, or on one process, it is
    BatchNorm2d. The gradient flows through the shared statistics (all-reduce's backward all-reduces),
    so DDP's averaged gradients equal a single process's on the global batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        x32 = x if x.dtype in (torch.float32, torch.float64) else x.float()  # bf16/fp16: fp32 statistics
        # sums of (x - shift) keep E[x^2] - E[x]^2 from cancelling when |mean| >> std; the running mean
        # is the same on every rank, so the shift cancels exactly in the combined statistics
        shift = (self.running_mean if self.running_mean is not None else x32.new_zeros(channels)).detach()
        centred = x32 - shift[None, :, None, None]
        count = x32.new_tensor([x32.numel() / channels])
        local = torch.cat([centred.sum(dim=(0, 2, 3)), (centred * centred).sum(dim=(0, 2, 3)), count])
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean_shifted = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean_shifted * mean_shifted).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean_shifted + shift, momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp_min(1), momentum)
        out = (centred - mean_shifted[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)


def sync_batchnorm(model: nn.Module) -> int:
    """Turn every BatchNorm2d of `model` into SyncBatchNorm2d in place; returns how many.

    The modules keep their identity (only the class changes), so state, hooks and references held
    elsewhere (a locked tower's list of frozen norms) stay valid."""
    layers = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    for module in layers:
        module.__class__ = SyncBatchNorm2d
    return len(layers)


def _average_grad(param: torch.Tensor) -> None:
    import torch.distributed as dist

    dist.all_reduce(param.grad)
    param.grad.div_(dist.get_world_size())


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when `flag` is true on any (so all ranks stop at the same step)."""
    if not info.distributed:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def cleanup(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
