"""Training-step throughput: clipstack vs open_clip, same architecture, same batch, side by side.

clipstack: `create_model(name)` + `create_optimizer` (fused AdamW, no-decay groups) + `ClipLoss` +
`train_step`. open_clip: `open_clip.model.CLIP` built from the same config JSON + its `ClipLoss` + AdamW
with its exclude rule, stepped exactly as `open_clip_train.train.train_one_epoch` does (accum_freq 1,
zero_grad, autocast forward + loss, backward, step, logit_scale clamp). The two implementations'
steps are interleaved so background load hits both alike; the median step time is reported.

clipstack's model has its large fp32 linear layers routed through oneDNN, as `clipstack train` does by
default on CPU (`precision.onednn auto`; clip-tiny has none that large).

It also measures the machine's GEMM FLOP/s (square `torch.mm`, and in fp32 the oneDNN GEMM too) and
counts the model's training FLOPs (forward + backward matmuls/convs/attention, torch.utils.flop_counter
with the SDPA math kernel so attention is counted), so it prints model FLOPs utilization: achieved
FLOP/s / the better of the two measured GEMM rates.

    python benchmarks/train_step.py          # clip-tiny and ViT-B-32, fp32 and bf16 autocast, batch 32
    python benchmarks/train_step.py --models ViT-B-32 --precisions bf16 --steps 5
    python benchmarks/train_step.py --bf16-models clip-tiny    # skip ViT-B-32 bf16 on a CPU without bf16

bf16 is run for the models in --bf16-models (default: all). CPUs without native bf16 matmul run it
~100x slower than fp32; the AMD EPYC this was written on has avx512_bf16 and runs it ~4x faster.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch


def _register_torchvision_ops() -> None:
    """The pinned torchvision is a CUDA build; define its two op schemas so open_clip imports on CPU."""
    if torch.version.cuda is not None:
        return
    global _TV_LIB
    try:
        _TV_LIB = torch.library.Library("torchvision", "DEF")
        _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TV_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:
        pass


_TV_LIB = None


def gemm_flops(dtype: torch.dtype, n: int = 1024, seconds: float = 1.0, onednn: bool = False) -> float:
    """Best-of-3 FLOP/s of an n x n x n matmul in `dtype`: `torch.mm`, or (fp32, `onednn=True`) the
    oneDNN GEMM clipstack's training routes large linear layers through, conversions included."""
    from clipstack.models.onednn import _gemm

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    mm = (lambda: _gemm(a, b)) if onednn else (lambda: torch.mm(a, b))
    mm()
    best = 0.0
    for _ in range(3):
        reps, t0 = 0, time.perf_counter()
        while True:
            mm()
            reps += 1
            dt = time.perf_counter() - t0
            if dt > seconds / 3:
                break
        best = max(best, 2 * n**3 * reps / dt)
    return best


def counted_step(step, images, texts, dtype) -> float:
    """Run one full step (the warmup) and return its forward + backward FLOPs.

    torch.utils.flop_counter counts matmuls, convolutions and attention; the SDPA math kernel is forced
    for this one step so attention shows up as counted matmuls. Optimizer FLOPs are not counted.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        step(images, texts, dtype)
    return float(counter.get_total_flops())


def build_clipstack(name: str, lr: float):
    from clipstack.models import create_model
    from clipstack.train.losses import ClipLoss
    from clipstack.train.optim import create_optimizer
    from clipstack.train.step import train_step

    model = create_model(name).train()  # `clipstack train` routes large fp32 linears via oneDNN: see bench()
    opt = create_optimizer(model, lr=lr, weight_decay=0.2)
    loss = ClipLoss()

    def step(images, texts, dtype):
        train_step(model, (images, texts), loss, opt, autocast_dtype=dtype)

    return model, step


def build_open_clip(cfg: dict, lr: float):
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP

    model = CLIP(**cfg, output_dict=True).train()

    def exclude(n, p):  # open_clip_train/main.py
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": 0.2},
        ],
        lr=lr, betas=(0.9, 0.98), eps=1e-6,
    )
    loss = ClipLoss()

    def step(images, texts, dtype):  # train_one_epoch, accum_freq == 1, no scaler, no grad clip
        autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else _null()
        opt.zero_grad()
        with autocast:
            model_out = model(images, texts)
            losses = loss(**model_out, output_dict=True)
            total = sum(losses.values())
        total.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return model, step


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def bench(name: str, precision: str, batch: int, steps: int, warmup: int) -> dict:
    from clipstack.models import get_model_config, get_tokenizer

    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    from clipstack.models.onednn import use_onednn

    gemm_dtype = dtype or torch.float32

    def machine_gemm() -> tuple[float, float]:
        mkl = gemm_flops(gemm_dtype, seconds=0.6)
        return mkl, (gemm_flops(gemm_dtype, seconds=0.6, onednn=True) if dtype is None else mkl)

    gemm_before = machine_gemm()
    torch.manual_seed(0)
    cs_model, cs_step = build_clipstack(name, lr=1e-4)
    oc_model, oc_step = build_open_clip(get_model_config(name), lr=1e-4)
    size = cs_model.image_size[0] if isinstance(cs_model.image_size, tuple) else cs_model.image_size
    images = torch.randn(batch, 3, size, size)
    captions = [f"a photo of object number {i} on a {['red', 'blue', 'green'][i % 3]} table" for i in range(batch)]
    texts = get_tokenizer(name)(captions, context_length=cs_model.context_length)
    runs = (("clipstack", cs_step), ("open_clip", oc_step))
    # The first step of each is the warmup (lazy optimizer state, allocator) and is also the FLOP count.
    flops = {label: counted_step(step, images, texts, dtype) for label, step in runs}
    # As `clipstack train` does (precision.onednn auto): after the FLOP count, which sees only aten GEMMs.
    routed = use_onednn(cs_model) if dtype is None else 0
    times = {"clipstack": [], "open_clip": []}
    for i in range(max(0, warmup - 1) + steps):
        for label, step in runs if i % 2 == 0 else runs[::-1]:  # alternate who goes first
            t0 = time.perf_counter()
            step(images, texts, dtype)
            if i >= warmup - 1:
                times[label].append(time.perf_counter() - t0)
    gemm_after = machine_gemm()
    mkl, onednn = (gemm_before[0] + gemm_after[0]) / 2, (gemm_before[1] + gemm_after[1]) / 2
    gemm = max(mkl, onednn)  # MFU against the machine's best GEMM, whichever library gives it
    row = {"model": name, "precision": precision, "batch": batch, "steps": steps, "gemm": gemm,
           "gemm_mm": mkl, "gemm_onednn": onednn, "routed": routed}
    for label, ts in times.items():
        t = statistics.median(ts)
        row[f"{label}_gflop"] = flops[label] / 1e9
        row[f"{label}_sps"] = batch / t
        row[f"{label}_mfu"] = flops[label] / t / gemm
    row["ratio"] = row["clipstack_sps"] / row["open_clip_sps"]
    del cs_model, oc_model
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="clip-tiny,ViT-B-32")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--bf16-models", default="clip-tiny,ViT-B-32",
                   help="models to run in bf16 (CPUs without native bf16 matmul are ~100x slower there)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=0, help="timed steps per implementation (0: per-model default)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _register_torchvision_ops()
    precisions = args.precisions.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for name in args.models.split(","):
        for precision in precisions:
            if precision == "bf16" and name not in args.bf16_models.split(","):
                continue
            steps = args.steps or (20 if "tiny" in name else 2)
            r = bench(name, precision, args.batch, steps, max(1, args.warmup))
            rows.append(r)
            print(f"  {name} {precision}: {r['clipstack_sps']:.2f} vs {r['open_clip_sps']:.2f} samples/s", flush=True)
    cols = ["model", "prec", "batch", "steps", "GEMM GFLOP/s mm / oneDNN", "oneDNN layers", "GFLOP/step cs / oc",
            "clipstack samples/s",
            "open_clip samples/s", "ratio", "clipstack MFU", "open_clip MFU"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
    for r in rows:
        cells = [r["model"], r["precision"], r["batch"], r["steps"],
                 f"{r['gemm_mm'] / 1e9:.1f} / {r['gemm_onednn'] / 1e9:.1f}", r["routed"],
                 f"{r['clipstack_gflop']:.1f} / {r['open_clip_gflop']:.1f}", f"{r['clipstack_sps']:.2f}",
                 f"{r['open_clip_sps']:.2f}", f"{r['ratio']:.2f}x", f"{100 * r['clipstack_mfu']:.1f}%",
                 f"{100 * r['open_clip_mfu']:.1f}%"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
