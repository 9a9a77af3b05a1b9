"""The training loop: `train(config, callbacks) -> TrainResult`, from one CPU process to torchrun DDP/FSDP.

Set-up order matters for exact resume: seed, build the model (same init on every rank), freeze towers,
wrap (DDP/FSDP2), build optimizer and schedule, then restore a checkpoint over all of it (RNG states
last). Each epoch is a `TrainLoader` started at the saved step, so a resumed run sees the same batches.
One optimizer step is `clipstack.train.step.train_step` (contrastive-correct accumulation, autocast).
Evaluation is not imported here: an orchestrator passes callbacks that run every N steps.

A diverged run (non-finite weights or loss) ends with a `ClipstackError`, saving nothing past it. Data
counts balance (see `runlog.data_report`); each unreadable shard is warned about once and named.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clipstack.errors import ClipstackError
from clipstack.train import runlog
from clipstack.train.captions import MultiCaption, MultiCaptionLoss
from clipstack.train.config import TrainConfig, load_config
from clipstack.train.runlog import Callback, MetricsLog, StepContext, as_callbacks, write_run_config

__all__ = ["train", "TrainResult", "Callback", "StepContext"]

# Consecutive steps with a non-finite loss that mean the run has diverged. One such step is a skipped
# bad batch; a few in a row mean weights so large (finite or not) that every forward overflows.
DIVERGED_AFTER = 3


@dataclass
class TrainResult:
    run_dir: Path
    export_path: Path | None
    last_metrics: dict[str, Any]
    step: int
    epoch: int
    stopped: str  # "done" | "max_steps" | "time_budget"
    checkpoint: Path | None
    data_stats: dict[str, Any] = field(default_factory=dict)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _coerce(config: TrainConfig | dict | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return load_config(base=config)  # validates
    if isinstance(config, dict):
        return load_config(base=config)
    return load_config(path=config)


def train(config: TrainConfig | dict | str | Path, callbacks: list[Any] | None = None) -> TrainResult:
    """Train a dual encoder as `config` says; return the run folder, export path and last metrics."""
    from clipstack.train.distributed import barrier, cleanup, init_distributed

    cfg = _coerce(config)
    info = init_distributed(cfg.distributed.backend, cfg.precision.device)
    try:
        result = _Run(cfg, info, as_callbacks(callbacks)).run()
        # Every rank finishes its last collective before any tears the group down: a rank that destroys
        # it while a peer still talks to it can abort that peer ("terminate called ...") on a busy machine.
        barrier(info)
        return result
    finally:
        cleanup(info)


class _Run:
    def __init__(self, cfg: TrainConfig, info: Any, callbacks: list[Callback]) -> None:
        self.cfg, self.info, self.callbacks = cfg, info, callbacks
        self.run_dir = Path(cfg.logging.run_dir)

    # ------------------------------------------------------------------------------------------ set-up

    def _build_model(self):
        from clipstack.models import create_model

        cfg = self.cfg
        _seed_all(cfg.seed)
        model = create_model(cfg.model.name, pretrained=cfg.model.pretrained, device="cpu",
                             **cfg.model.overrides)
        if cfg.model.lock_image:
            model.lock_image_tower()
        if cfg.model.lock_text:
            model.lock_text_tower()
        if cfg.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model = model.to(self.info.device)
        self.onednn_linears = 0
        onednn = cfg.precision.onednn
        if onednn == "auto":
            onednn = "on" if (self.info.device.type == "cpu" and cfg.precision.dtype == "fp32"
                              and not cfg.distributed.fsdp and not cfg.model.compile) else "off"
        if onednn == "on":
            from clipstack.models.onednn import use_onednn

            self.onednn_linears = use_onednn(model)
        return model

    def _build_loss(self, model) -> nn.Module:
        from clipstack.train.losses import build_loss

        cfg, info = self.cfg, self.info
        kind = cfg.loss
        if kind == "auto":
            kind = "siglip" if getattr(model, "logit_bias", None) is not None else "clip"
        dist_kw = {"rank": info.rank, "world_size": info.world_size}
        if kind == "clip":
            loss = build_loss("clip", local_loss=cfg.distributed.local_loss,
                              gather_with_grad=cfg.distributed.gather_with_grad, **dist_kw)
        else:
            loss = build_loss("siglip", **dist_kw)
        self.loss_kind = kind
        k, negatives = cfg.data.captions_per_image, bool(cfg.data.hard_negatives)
        return MultiCaptionLoss(loss, k, negatives) if k > 1 or negatives else loss

    def _loader_spec(self, model):
        from clipstack.data.loader import LoaderSpec, resolve_sources, steps_per_epoch
        from clipstack.data.negatives import WordSwap
        from clipstack.data.transforms import preprocess_from_cfg
        from clipstack.models import get_tokenizer

        cfg, info = self.cfg, self.info
        if cfg.data.batch_size % info.world_size:
            raise ClipstackError(f"data.batch_size: {cfg.data.batch_size} is not divisible by the "
                                 f"{info.world_size} ranks")
        local = cfg.data.batch_size // info.world_size
        if local % cfg.optim.accum_freq:
            raise ClipstackError(f"optim.accum_freq: the per-rank batch of {local} does not split into "
                                 f"{cfg.optim.accum_freq} equal micro-batches")
        specs = [(s.name or f"source{i}", s.urls, s.weight) for i, s in enumerate(cfg.source_list())]
        sources = resolve_sources(specs)
        pre = dict(getattr(model, "preprocess_cfg", None) or {})
        pre.setdefault("size", model.image_size)
        transform = preprocess_from_cfg(pre, is_train=True, scale=tuple(cfg.data.augment_scale),
                                        ratio=tuple(cfg.data.augment_ratio))
        steps = cfg.data.steps_per_epoch or steps_per_epoch(sources, cfg.data.batch_size)
        return LoaderSpec(sources=sources, batch_size=local, transform=transform,
                          tokenizer=get_tokenizer(cfg.model.name), seed=cfg.seed, rank=info.rank,
                          world_size=info.world_size, workers=cfg.data.workers,
                          shuffle_buffer=cfg.data.shuffle_buffer, shuffle_shards=cfg.data.shuffle_shards,
                          resampled=cfg.data.resampled, captions_per_image=cfg.data.captions_per_image,
                          steps=steps,
                          negatives=WordSwap(cfg.data.hard_negatives) if cfg.data.hard_negatives else None)

    # ---------------------------------------------------------------------------------------- the loop

    def run(self) -> TrainResult:
        from clipstack.train.checkpoint import list_checkpoints, load_checkpoint, resolve_resume
        from clipstack.train.distributed import sync_batchnorm, wrap_model
        from clipstack.train.optim import build_scheduler, create_optimizer

        cfg, info = self.cfg, self.info
        if cfg.precision.deterministic:
            torch.use_deterministic_algorithms(True)
        resume_from = resolve_resume(cfg.checkpoint.resume, self.run_dir, warn=info.is_main)
        if resume_from is None and list_checkpoints(self.run_dir):
            raise ClipstackError(f"logging.run_dir: {self.run_dir} already holds checkpoints; pass "
                                 f"--resume latest to continue it, or pick another run folder")
        model = self._build_model()
        if cfg.distributed.sync_batchnorm and info.distributed:
            synced = sync_batchnorm(model)
            if info.is_main:
                print(f"distributed.sync_batchnorm: {synced} BatchNorm layers use global-batch statistics"
                      + ("" if synced else " (this model has none; only ResNet towers do)"), flush=True)
        loss_fn = self._build_loss(model)
        spec = self._loader_spec(model)
        # The caption wrapper goes inside DDP, so DDP's no_sync reaches the accumulation loop.
        several_texts = cfg.data.captions_per_image > 1 or bool(cfg.data.hard_negatives)
        net = MultiCaption(model) if several_texts else model
        wrapped = wrap_model(net, info, fsdp=cfg.distributed.fsdp)
        if cfg.model.compile:
            wrapped = torch.compile(wrapped)
        optimizer = create_optimizer(model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                     betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
        self.steps_per_epoch = spec.steps
        total = cfg.schedule.epochs * spec.steps
        if cfg.schedule.max_steps:
            total = min(total, cfg.schedule.max_steps)
        self.total_steps = total
        scheduler = build_scheduler(optimizer, kind=cfg.schedule.kind,
                                    warmup_steps=min(cfg.schedule.warmup_steps, total), total_steps=total,
                                    cooldown_steps=cfg.schedule.cooldown_steps,
                                    min_ratio=cfg.schedule.min_lr_ratio)
        scaler = None
        if cfg.precision.dtype == "fp16":
            if info.device.type != "cuda":
                raise ClipstackError("precision.dtype: fp16 needs a GPU (use bf16 or fp32 on CPU)")
            scaler = torch.amp.GradScaler("cuda")
        self.model, self.wrapped, self.loss_fn = model, wrapped, loss_fn
        self.optimizer, self.scheduler, self.scaler, self.spec = optimizer, scheduler, scaler, spec
        self.step = self.epoch = self.step_in_epoch = 0
        self.data_stats: dict[str, Any] = {}
        self.data_position: dict[int, int] = {}  # reader -> raw samples taken, this epoch
        if resume_from is not None:
            state = load_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler,
                                    scaler=scaler, rank=info.rank)
            self.step, self.epoch = int(state["step"]), int(state["epoch"])
            self.step_in_epoch = int(state["step_in_epoch"])
            per_rank = state.get("data_stats_per_rank") or []
            self.data_stats = per_rank[info.rank] if info.rank < len(per_rank) else {}
            positions = state.get("data_position_per_rank") or []
            self.data_position = dict(positions[info.rank]) if info.rank < len(positions) else {}
            if state.get("world_size", info.world_size) != info.world_size:
                raise ClipstackError(f"checkpoint.resume: {resume_from} was written by "
                                     f"{state.get('world_size')} ranks, this run has {info.world_size}")
            if info.is_main:
                print(f"resumed from {resume_from} (step {self.step}, epoch {self.epoch})", flush=True)
        self.resumed_from = resume_from
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_run_config(self.run_dir, cfg.to_dict(), dict(getattr(model, "model_config", {}) or {}), {
                "world_size": info.world_size, "loss": self.loss_kind, "steps_per_epoch": spec.steps,
                "total_steps": total, "resumed_from": str(resume_from) if resume_from else None,
                "onednn_linears": self.onednn_linears,
            })
        self.log = MetricsLog(self.run_dir, info.is_main, self.step if resume_from else None,
                              cfg.logging.tensorboard)
        try:
            stopped = self._loop()
        finally:
            self.log.close()
        return self._finish(stopped)

    def _loop(self) -> str:
        from clipstack.data.loader import TrainLoader, merge_stats
        from clipstack.progress import progress
        from clipstack.train.distributed import all_reduce_mean, any_rank
        from clipstack.train.step import train_step

        cfg, info = self.cfg, self.info
        autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision.dtype]
        bar = progress(total=self.total_steps, desc="train", unit="step",
                       disable=None if (info.is_main and cfg.logging.progress) else True)
        bar.update(self.step)
        start_wall = time.monotonic()
        self.last_metrics: dict[str, Any] = {}
        self.last_ckpt: Path | None = None
        self.nonfinite_streak = 0
        stopped = "done"
        while self.step < self.total_steps:
            if self.step_in_epoch == 0:
                self.data_position = {}
            loader = TrainLoader(self.spec, self.epoch, start_step=self.step_in_epoch,
                                 positions=self.data_position)
            batches = iter(loader)
            window_wait = window_time = 0.0
            window_samples = 0
            t_prev = time.perf_counter()
            while self.step < self.total_steps:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                t_data = time.perf_counter()
                merge_stats(self.data_stats, batch["stats"])
                self._note_shard_errors(batch["stats"].get("shard_errors"))
                self.data_position.update(batch["stats"].get("position", {}))
                images = batch["images"].to(info.device, non_blocking=True)
                texts = batch["texts"].to(info.device, non_blocking=True)
                try:
                    res = train_step(self.wrapped, (images, texts), self.loss_fn, self.optimizer,
                                     scheduler=self.scheduler, scaler=self.scaler,
                                     accum_steps=cfg.optim.accum_freq, autocast_dtype=autocast,
                                     clip_grad_norm=cfg.optim.grad_clip)
                except (torch.OutOfMemoryError, RuntimeError) as exn:
                    _raise_if_oom(exn, images.shape[0], cfg)
                    raise
                if res.skipped:
                    # Non-finite gradients: a bad batch (skipped, harmless) or diverged weights (every
                    # later step would be skipped too); only the latter stops the run. `skipped` is the
                    # same on every rank (global grad norm), so these collectives line up.
                    self._check_finite(res.loss, self.step + 1)
                    bad_loss = any_rank(not math.isfinite(res.loss), info)
                    self.nonfinite_streak = self.nonfinite_streak + 1 if bad_loss else 0
                else:
                    self.nonfinite_streak = 0
                if self.nonfinite_streak >= DIVERGED_AFTER:
                    self._diverged(f"the loss has not been finite for {self.nonfinite_streak} steps in a "
                                   f"row (loss {res.loss})", self.step + 1)
                t_end = time.perf_counter()
                self.step += 1
                self.step_in_epoch += 1
                if self.step_in_epoch >= self.spec.steps:
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                window_wait += t_data - t_prev
                window_time += t_end - t_prev
                window_samples += res.samples * info.world_size
                t_prev = t_end
                bar.update(1)
                if self.step % cfg.logging.every_steps == 0 or self.step == self.total_steps:
                    loss = all_reduce_mean(res.loss, info)
                    self.last_metrics = {
                        "step": self.step, "epoch": self.epoch, "loss": loss, "lr": res.lr,
                        "logit_scale": res.logit_scale, "logit_bias": res.logit_bias,
                        "grad_norm": res.grad_norm, "samples_per_s": window_samples / max(window_time, 1e-9),
                        "data_wait": window_wait / max(window_time, 1e-9), "skipped": res.skipped,
                    }
                    self.log.write(self.last_metrics)
                    bar.set_postfix(loss=f"{loss:.4f}", sps=f"{self.last_metrics['samples_per_s']:.1f}")
                    window_wait = window_time = 0.0
                    window_samples = 0
                out_of_time = cfg.schedule.time_budget_s is not None and (
                    time.monotonic() - start_wall > cfg.schedule.time_budget_s)
                if cfg.schedule.time_budget_s is not None and any_rank(out_of_time, info):
                    stopped = "time_budget"
                if self.step % cfg.checkpoint.every_steps == 0 or stopped != "done":
                    self._save(final=stopped != "done")
                self._callbacks(final=False)
                if stopped != "done":
                    break
                t_prev = time.perf_counter()
            del batches
            if stopped != "done":
                break
        bar.close()
        if stopped == "done" and cfg.schedule.max_steps and self.step >= cfg.schedule.max_steps \
                and self.step < cfg.schedule.epochs * self.spec.steps:
            stopped = "max_steps"
        return stopped

    def _save(self, final: bool = True) -> None:
        from clipstack.train.checkpoint import save_checkpoint

        info = self.info
        # Never checkpoint or export weights that give a non-finite loss or are not finite themselves:
        # a periodic save waits for a finite step; the final one cannot, so the run fails instead.
        if self.nonfinite_streak:
            if not final:
                return
            self._diverged(f"the run ended on {self.nonfinite_streak} step(s) with a non-finite loss",
                           self.step)
        self._check_finite(self.last_metrics.get("loss"), self.step)
        gathered = [(self.data_stats, self.data_position)]
        if info.distributed:
            import torch.distributed as dist

            gathered = [None] * info.world_size
            dist.all_gather_object(gathered, (self.data_stats, self.data_position))
        per_rank = [g[0] for g in gathered]
        # An epoch boundary restarts the streams: a position only means something mid-epoch.
        positions = [g[1] if self.step_in_epoch else {} for g in gathered]
        self.data_totals = runlog.sum_data_stats(per_rank)
        self.last_ckpt = save_checkpoint(
            self.run_dir, self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            scaler=self.scaler, keep_last=self.cfg.checkpoint.keep_last, sharded=self.cfg.distributed.fsdp,
            rank=info.rank,
            extra={"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "world_size": info.world_size,
                   "data_stats_per_rank": per_rank, "data_stats": self.data_totals,
                   "data_position_per_rank": positions,
                   "data_topology": {"workers": self.spec.workers, "seed": self.spec.seed,
                                     "steps_per_epoch": self.spec.steps}})

    def _note_shard_errors(self, errors: dict[str, str] | None) -> None:
        """Remember each unreadable shard once (its first reason) and warn about it once per run."""
        known = self.data_stats.setdefault("shard_errors", {})
        for url, reason in (errors or {}).items():
            if url not in known:
                known[url] = reason
                print(f"clipstack: warning: {reason}; skipping the rest of this shard", file=sys.stderr,
                      flush=True)

    def _check_finite(self, loss: float | None, step: int) -> None:
        """Raise (on every rank alike) when any parameter is nan or inf after `step`: the run diverged."""
        from clipstack.train.distributed import any_rank
        from clipstack.train.step import params_finite

        if any_rank(not params_finite(self.model), self.info):
            self._diverged(f"model parameters are no longer finite (loss {loss})", step)

    def _diverged(self, why: str, step: int) -> None:
        """Stop the run with one message (and summary.json saying so); nothing more is saved."""
        last = self.last_ckpt or self.resumed_from
        kept = f"the newest checkpoint is {last}" if last else "no checkpoint was written"
        message = (f"training diverged by step {step}: {why}; nothing saved or exported past it, {kept}; "
                   f"lower optim.lr (now {self.cfg.optim.lr:g}) or set optim.grad_clip")
        if self.info.is_main:
            runlog.write_summary(self.run_dir, {
                "step": self.step, "epoch": self.epoch, "stopped": "diverged", "error": message,
                "export": None, "checkpoint": last, "last_metrics": self.last_metrics,
                "data": runlog.data_report(getattr(self, "data_totals", None) or self.data_stats)})
        raise ClipstackError(message)

    def _callbacks(self, final: bool) -> None:
        due = [cb for cb in self.callbacks if cb.due(self.step, final)]
        if not due:
            return
        from clipstack.train.distributed import barrier

        was_training = self.model.training
        self.model.eval()
        for cb in due:
            # Under FSDP every rank must join the forward's all-gathers, so all ranks run callbacks.
            if cb.main_only and not self.info.is_main and not self.cfg.distributed.fsdp:
                continue
            ctx = StepContext(step=self.step, epoch=self.epoch, total_steps=self.total_steps, model=self.model,
                              run_dir=self.run_dir, metrics=dict(self.last_metrics), is_main=self.info.is_main,
                              final=final)
            with torch.no_grad():
                result = cb.fn(ctx)
            if isinstance(result, dict) and self.info.is_main:
                self.log.write({"step": self.step, "callback": cb.name, **result})
        self.model.train(was_training)
        barrier(self.info)

    def _finish(self, stopped: str) -> TrainResult:
        cfg, info = self.cfg, self.info
        if self.last_ckpt is None or not self.last_ckpt.name.endswith(f"{self.step:06d}"):
            self._save(final=True)
        export = None
        # A time-budgeted stop exports too: the weights so far are what the user asked for; a resumed run
        # exports again over them.
        if cfg.checkpoint.export:
            export = self._export()
        self.log = MetricsLog(self.run_dir, info.is_main, self.step, False)  # reopen for end callbacks
        try:
            self._callbacks(final=True)
        finally:
            self.log.close()
        if info.is_main and cfg.logging.plots:
            try:
                from clipstack.train.plots import plot_run

                plot_run(self.run_dir)
            except ImportError:  # matplotlib missing: the run itself is fine
                pass
        report = runlog.data_report(self.data_totals)
        result = TrainResult(run_dir=self.run_dir, export_path=export, last_metrics=self.last_metrics,
                             step=self.step, epoch=self.epoch, stopped=stopped, checkpoint=self.last_ckpt,
                             data_stats=report)
        if info.is_main:
            runlog.write_summary(self.run_dir, {
                "step": self.step, "epoch": self.epoch, "stopped": stopped, "export": export,
                "checkpoint": self.last_ckpt, "last_metrics": self.last_metrics, "data": report})
        return result

    def _export(self) -> Path | None:
        from clipstack.models import save_pretrained

        out = self.run_dir / "export"
        model = self.model
        if self.cfg.distributed.fsdp:
            # Every rank joins the gathers; rank 0 keeps the full tensors.
            full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
                    for k, v in model.state_dict().items()}
            if not self.info.is_main:
                return out
            model = self._build_model().cpu()
            model.load_state_dict(full)
        if self.info.is_main:
            save_pretrained(model, out)
        return out


def _raise_if_oom(exn: BaseException, batch: int, cfg: TrainConfig) -> None:
    text = str(exn).lower()
    if isinstance(exn, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text:
        raise ClipstackError(
            f"out of memory on a per-rank batch of {batch}: set optim.accum_freq (e.g. "
            f"{max(2, cfg.optim.accum_freq * 2)}) to split each step into micro-batches, turn on "
            f"model.grad_checkpointing, or lower data.batch_size") from exn
