"""One optimizer step of contrastive training, with gradient accumulation that keeps the global batch.

Contrastive losses do not decompose over samples: every image is scored against every text. Naively
summing per-micro-batch losses would shrink the negatives to the micro-batch. Instead (as open_clip's
`--accum-freq`), the step first embeds all micro-batches without grad, then re-embeds each micro-batch
with grad and evaluates the loss on the full batch with the other micro-batches' cached features, so the
summed gradients equal the full-batch gradients while activations are held for one micro-batch at a time.
Two refinements over open_clip: the temperature/bias get their gradient once (open_clip adds it k times),
and each re-forward replays the RNG state of its cached forward, so dropout and friends see the same mask.

No logging or IO here: the loop (clipstack.train.loop) calls `train_step` and records the result.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipstack.errors import ConfigError
from clipstack.train.losses import clamp_logit_scale_
from clipstack.train.optim import clip_grad_norm as _clip_grad_norm

__all__ = ["StepResult", "train_step", "split_batch", "unpack_output", "params_finite"]


@dataclass
class StepResult:
    """What one step did. `loss` is the (rank-local) loss on the full step batch."""

    loss: float
    grad_norm: float
    logit_scale: float  # exp of the log-space parameter, i.e. 1 / temperature, as used in the loss
    logit_bias: float | None
    lr: float
    samples: int
    skipped: bool  # non-finite gradients (or a grad-scaler overflow): parameters were not updated


def unpack_output(out) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(image_features, text_features, logit_scale, logit_bias) from a model output tuple or dict."""
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
    if isinstance(out, (tuple, list)) and len(out) in (3, 4):
        return out[0], out[1], out[2], (out[3] if len(out) == 4 else None)
    raise TypeError(f"model output: expected (img, txt, scale[, bias]) or a dict, got {type(out).__name__}")


def split_batch(batch, parts: int) -> list[tuple[Tensor, Tensor]]:
    """(images, texts) or {"image": ..., "text": ...} -> `parts` equal micro-batches along dim 0."""
    if isinstance(batch, dict):
        images = batch.get("image", batch.get("images"))
        texts = batch.get("text", batch.get("texts"))
    else:
        images, texts = batch
    n = images.shape[0]
    if texts.shape[0] != n:
        raise ConfigError(f"batch: {n} images but {texts.shape[0]} texts")
    if parts < 1 or n % parts:
        raise ConfigError(f"accum_steps: the batch of {n} does not split into {parts} equal micro-batches")
    return list(zip(images.chunk(parts), texts.chunk(parts)))


def _rng_state(device: torch.device):
    state = [torch.get_rng_state()]
    if device.type == "cuda":
        state.append(torch.cuda.get_rng_state(device))
    return state


def _set_rng_state(device: torch.device, state) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def _zero_grad_through(t: Tensor) -> Tensor:
    """Same value as `t`, gradient 0 (0 * t is exactly 0 for finite t)."""
    return t.detach() + 0.0 * t


@contextlib.contextmanager
def _grad_sync(model: nn.Module, enabled: bool):
    """Skip the DDP all-reduce / FSDP2 reduce-scatter on all but the last micro-batch.

    Looks through wrappers (a multi-caption adapter, torch.compile) for the DDP or FSDP2 module.
    Without either, gradients simply accumulate locally.
    """
    if enabled:
        yield
        return
    for mod in model.modules():
        if hasattr(mod, "set_requires_gradient_sync"):  # FSDP2 (fully_shard)
            mod.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                mod.set_requires_gradient_sync(True)
            return
        if callable(getattr(mod, "no_sync", None)) and hasattr(mod, "reducer"):  # DDP
            with mod.no_sync():
                yield
            return
    yield


def params_finite(model: nn.Module) -> bool:
    """True when no parameter holds a nan or inf (this rank's shards under FSDP); one device sync."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    flags = [torch.isfinite(t.detach()).all() for t in local if t.numel()]
    return not flags or bool(torch.stack(flags).all())


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def train_step(
    model: nn.Module,
    batch,
    loss: Callable[..., Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    scaler: torch.amp.GradScaler | None = None,
    accum_steps: int = 1,
    autocast_dtype: torch.dtype | None = None,
    clip_grad_norm: float | None = None,
    clamp_logit_scale: bool = True,
) -> StepResult:
    """Forward, loss, backward (accumulated over `accum_steps` micro-batches), clip, step, schedule.

    `batch` is (images, texts) or a dict with image/text: the whole step's (rank-local) batch, split
    here into `accum_steps` equal micro-batches. `loss(img, txt, logit_scale, logit_bias)` returns a
    scalar (ClipLoss / SigLipLoss). `scheduler.step()` runs after the optimizer step, so the LR reported
    is the one this step used. Under DDP the gradient all-reduce runs only on the last micro-batch.
    Gradients are zeroed at the start of the step and left in place afterwards.
    """
    micro = split_batch(batch, accum_steps)
    device = micro[0][0].device
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    optimizer.zero_grad(set_to_none=True)
    lr = float(optimizer.param_groups[0]["lr"])

    def backward(value: Tensor) -> None:
        (scaler.scale(value) if scaler is not None else value).backward()

    if accum_steps == 1:
        images, texts = micro[0]
        with autocast:
            img, txt, scale, bias = unpack_output(model(images, texts))
            value = loss(img, txt, scale, bias)
        backward(value)
    else:
        value, scale, bias = _accumulate(model, micro, loss, autocast, backward, device)

    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = _clip_grad_norm(_params(optimizer), clip_grad_norm)
    if scaler is not None:
        before = scaler.get_scale()
        scaler.step(optimizer)  # skips the update itself on inf/nan gradients
        scaler.update()
        skipped = scaler.get_scale() < before
    else:
        skipped = not math.isfinite(grad_norm)
        if not skipped:
            optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if clamp_logit_scale:
        clamp_logit_scale_(model)
    return StepResult(
        loss=float(value.detach()),
        grad_norm=grad_norm,
        logit_scale=float(scale.detach()),
        logit_bias=None if bias is None else float(bias.detach()),
        lr=lr,
        samples=sum(m[0].shape[0] for m in micro),
        skipped=skipped,
    )


def _accumulate(
    model: nn.Module,
    micro: Sequence[tuple[Tensor, Tensor]],
    loss: Callable[..., Tensor],
    autocast,
    backward: Callable[[Tensor], None],
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Cache features of every micro-batch without grad, then re-forward each with grad and backprop."""
    cached_img, cached_txt, states = [], [], []
    with torch.no_grad(), autocast:
        for images, texts in micro:
            states.append(_rng_state(device))
            img, txt, _, _ = unpack_output(model(images, texts))
            cached_img.append(img)
            cached_txt.append(txt)
    after = _rng_state(device)
    k = len(micro)
    for j, (images, texts) in enumerate(micro):
        _set_rng_state(device, states[j])
        with _grad_sync(model, enabled=j == k - 1):
            with autocast:
                img, txt, scale, bias = unpack_output(model(images, texts))
                if j < k - 1:
                    # Each micro-batch's loss is the full-batch loss, so the temperature/bias gradient
                    # is taken once, on the last pass. Zeroed rather than detached: every parameter
                    # still gets a gradient, which DDP without find_unused_parameters requires.
                    scale = _zero_grad_through(scale)
                    bias = None if bias is None else _zero_grad_through(bias)
                all_img = torch.cat(cached_img[:j] + [img] + cached_img[j + 1 :])
                all_txt = torch.cat(cached_txt[:j] + [txt] + cached_txt[j + 1 :])
                value = loss(all_img, all_txt, scale, bias)
            backward(value)
    _set_rng_state(device, after)
    return value.detach(), scale.detach(), None if bias is None else bias.detach()
