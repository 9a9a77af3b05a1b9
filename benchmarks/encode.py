"""Encoding throughput, clipstack vs open_clip: same config, same weights, same batch, side by side.

    .venv/bin/python benchmarks/encode.py                      # ViT-B-32, batch 4, fp32 + bf16 autocast
    .venv/bin/python benchmarks/encode.py --model ViT-B-16 --batch 32 --iters 10 --precision fp32

Both models get identical weights (open_clip's random init, loaded into clipstack), the captions are
real sentences tokenized by the CLIP tokenizer, and the two implementations alternate every iteration
so load from other processes hits both alike; the table reports the median time per batch. The
`max|diff|` column checks that the outputs agree while being timed. "fp32-packed" is clipstack's model
after `models.inference.pack_for_inference` (what `clipstack eval`, `embed` and `serve` run on a CPU);
open_clip stays plain fp32 in those rows.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

CAPTIONS = [
    "a photo of a cat sitting on a wooden table",
    "two dogs running on the beach at sunset",
    "a red double-decker bus driving down a busy street in london",
    "close-up of a bowl of ramen with an egg and green onions",
    "an aerial view of a city at night with lights",
    "a diagram explaining the water cycle",
    "black and white portrait of an old man smiling",
    "a person riding a bicycle through a forest trail in autumn, leaves on the ground",
]


def _import_open_clip():
    """open_clip imports torchvision, whose CUDA build needs two op schemas a CPU torch lacks."""
    if torch.version.cuda is None:
        try:
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _import_open_clip.lib = lib  # keep the registration alive
        except RuntimeError:
            pass
    import open_clip

    return open_clip


def build_pair(name: str):
    open_clip = _import_open_clip()
    from clipstack.models import create_model, get_model_config

    cfg = get_model_config(name)
    oc_cfg = copy.deepcopy(cfg)
    cls = open_clip.CustomTextCLIP if oc_cfg.pop("custom_text", False) else open_clip.CLIP
    ref = cls(**oc_cfg).eval()
    ours = create_model(cfg).eval()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def time_pair(fn_a, fn_b, iters: int, warmup: int) -> tuple[float, float, float]:
    """Median seconds per call of fn_a and fn_b (alternating), and the max abs diff of their outputs."""
    times_a, times_b = [], []
    diff = 0.0
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        out_a = fn_a()
        t1 = time.perf_counter()
        out_b = fn_b()
        t2 = time.perf_counter()
        if i >= warmup:
            times_a.append(t1 - t0)
            times_b.append(t2 - t1)
        diff = max(diff, (out_a.float() - out_b.float()).abs().max().item())
    return statistics.median(times_a), statistics.median(times_b), diff


def run(name: str, batch: int, iters: int, warmup: int, precisions: list[str]) -> list[dict]:
    from clipstack.models import get_tokenizer
    from clipstack.models.inference import pack_for_inference

    ours, ref = build_pair(name)
    packed = pack_for_inference(copy.deepcopy(ours)) if "fp32-packed" in precisions else None
    image = torch.randn(batch, 3, *ours.image_size, generator=torch.Generator().manual_seed(0))
    text = get_tokenizer(name)([CAPTIONS[i % len(CAPTIONS)] for i in range(batch)])
    rows = []
    for precision in precisions:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        model = packed if precision == "fp32-packed" else ours
        for what, inputs, ours_fn, ref_fn in (("encode_image", image, model.encode_image, ref.encode_image),
                                             ("encode_text", text, model.encode_text, ref.encode_text)):
            with torch.inference_mode(), autocast:
                t_ours, t_ref, diff = time_pair(lambda f=ours_fn, x=inputs: f(x),
                                                lambda f=ref_fn, x=inputs: f(x), iters, warmup)
            rows.append({"model": name, "precision": precision, "what": what, "batch": batch,
                         "clipstack": batch / t_ours, "open_clip": batch / t_ref, "speedup": t_ref / t_ours,
                         "diff": diff})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default="fp32,fp32-packed,bf16",
                        help="comma list of fp32, fp32-packed (oneDNN-packed linears, what clipstack eval/embed/"
                             "serve run on CPU), bf16 (CPU autocast)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = run(args.model, args.batch, args.iters, args.warmup, args.precision.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, median of {args.iters} iterations")
    print("| model | precision | op | batch | clipstack samples/s | open_clip samples/s | speedup | max abs diff |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['what']} | {r['batch']} | {r['clipstack']:.1f} | "
              f"{r['open_clip']:.1f} | {r['speedup']:.2f}x | {r['diff']:.1e} |")


if __name__ == "__main__":
    main()
