"""Is the synthetic pool learnable? Train clip-tiny with a plain InfoNCE loop for a few CPU minutes on
`clipstack synth` output, then measure zero-shot accuracy and retrieval recall on its eval sets.

    clipstack synth data/synth                      # the default pool (20k samples) and eval sets
    python examples/learnability.py data/synth --minutes 3

Deliberately minimal and independent of the training and evaluation stages: images are decoded and
preprocessed once (the model's own eval transform), broken samples are skipped and counted, each step
picks one of a sample's captions at random. Prints a table of accuracy vs chance.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import clipstack
from clipstack.data.shards import expand_urls, iter_shard
from clipstack.models.factory import image_transform_for


def load_pool(pool: Path, transform) -> tuple[torch.Tensor, list[list[str]], dict[str, int]]:
    images, captions, counts = [], [], {"read": 0, "kept": 0, "bad_image": 0, "bad_caption": 0}
    for url in expand_urls(pool):
        for raw in iter_shard(url, on_error=lambda err: None):
            counts["read"] += 1
            data = next((raw[e] for e in ("jpg", "png", "webp") if e in raw), None)
            try:
                meta = json.loads(raw["json"].decode("utf-8"))
                caps = [c for c in meta.get("captions") or [raw["txt"].decode("utf-8")] if c.strip()]
            except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
                caps = []
            if not caps:
                counts["bad_caption"] += 1
                continue
            try:
                img = Image.open(io.BytesIO(data))
                img.load()
                images.append(transform(img.convert("RGB")))
            except Exception:  # noqa: BLE001 - truncated or corrupt files are skipped and counted
                counts["bad_image"] += 1
                continue
            captions.append(caps)
            counts["kept"] += 1
    return torch.stack(images), captions, counts


def load_eval(root: Path, split: str, transform) -> tuple[torch.Tensor, list]:
    import webdataset as wds

    n = int((root / split / "nshards.txt").read_text())
    label = "txt" if (root / "dataset_type.txt").read_text().strip() == "retrieval" else "cls"
    ds = wds.WebDataset([str(root / split / f"{i}.tar") for i in range(n)], shardshuffle=False,
                        empty_check=False).decode("pil").to_tuple("webp;png;jpg;jpeg", label)
    xs, ys = [], []
    for img, y in ds:
        xs.append(transform(img.convert("RGB")))
        ys.append(y.splitlines() if label == "txt" else int(y))
    return torch.stack(xs), ys


@torch.no_grad()
def encode_texts(model, tok, texts: list[str]) -> torch.Tensor:
    return torch.cat([model.encode_text(tok(texts[i:i + 512]), normalize=True) for i in range(0, len(texts), 512)])


@torch.no_grad()
def zeroshot(model, tok, root: Path, transform) -> tuple[float, dict[str, float]]:
    x, y = load_eval(root, "test", transform)
    classes = (root / "classnames.txt").read_text().splitlines()
    templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
    cls_emb = torch.stack([F.normalize(encode_texts(model, tok, [t.format(c=c) for t in templates]).mean(0), dim=-1)
                           for c in classes])
    img = model.encode_image(x, normalize=True)
    hit = (img @ cls_emb.T).argmax(1).eq(torch.tensor(y)).float()
    per_class = {c: hit[torch.tensor(y) == k].mean().item() for k, c in enumerate(classes)}
    return hit.mean().item(), per_class


@torch.no_grad()
def retrieval(model, tok, root: Path, transform) -> tuple[float, float]:
    x, caps = load_eval(root, "test", transform)
    texts = [c for cs in caps for c in cs]
    owner = torch.tensor([i for i, cs in enumerate(caps) for _ in cs])
    sim = encode_texts(model, tok, texts) @ model.encode_image(x, normalize=True).T  # [T, I]
    t2i = sim.argmax(1).eq(owner).float().mean().item()
    i2t = owner[sim.argmax(0)].eq(torch.arange(len(caps))).float().mean().item()
    return t2i, i2t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("synth_dir", type=Path)
    ap.add_argument("--model", default="clip-tiny")
    ap.add_argument("--minutes", type=float, default=3.0,
                    help="training budget in CPU minutes of this process (not wall time: fair on a busy machine)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a busy machine: more threads spin-wait)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = clipstack.create_model(args.model)
    tok = clipstack.get_tokenizer(args.model)
    transform = image_transform_for(model, is_train=False)
    evalsets = ["shapes", "colors", "patterns", "color_shape"]
    chance = {s: 1 / len((args.synth_dir / "eval" / s / "classnames.txt").read_text().splitlines())
              for s in evalsets}

    t0 = time.time()
    images, captions, counts = load_pool(args.synth_dir / "pool", transform)
    print(f"pool: {counts} loaded in {time.time() - t0:.0f} s; images {tuple(images.shape)}")
    before = {s: zeroshot(model.eval(), tok, args.synth_dir / "eval" / s, transform)[0] for s in evalsets}

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    budget, step, total, warmup = args.minutes * 60, 0, None, 50
    start, cpu_start = time.time(), time.process_time()
    model.train()
    while True:
        elapsed = time.process_time() - cpu_start
        if step == 20:  # the step budget follows from the measured speed, so the cosine ends on time
            total = max(40, int(budget / (elapsed / 20)))
        if elapsed >= budget or (total and step >= total):
            break
        frac = step / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, step / (total or 10**9))))
        for group in opt.param_groups:
            group["lr"] = args.lr * frac
        idx = torch.randint(len(captions), (args.batch_size,))
        text = tok([random.choice(captions[i]) for i in idx.tolist()])
        img_f, txt_f, scale = model(images[idx], text)[:3]
        logits = scale * img_f @ txt_f.T
        labels = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  {elapsed:6.1f} CPU s", flush=True)
        step += 1
    train_s, wall_s = time.process_time() - cpu_start, time.time() - start
    model.eval()
    results = {s: zeroshot(model, tok, args.synth_dir / "eval" / s, transform) for s in evalsets}
    after = {s: acc for s, (acc, _) in results.items()}
    t2i, i2t = retrieval(model, tok, args.synth_dir / "eval" / "retrieval", transform)
    n_ret = len(load_eval(args.synth_dir / "eval" / "retrieval", "test", transform)[1])
    print(f"\n{args.model}: {step} steps x batch {args.batch_size} in {train_s:.0f} CPU s ({wall_s:.0f} s wall) "
          f"({step * args.batch_size / counts['kept']:.1f} epochs), {args.threads} threads, final loss {loss.item():.3f}")
    print("| eval set | classes | chance | untrained | trained | trained / chance |")
    print("|---|---|---|---|---|---|")
    for s in evalsets:
        print(f"| {s} | {round(1 / chance[s])} | {chance[s]:.3f} | {before[s]:.3f} | {after[s]:.3f} | "
              f"{after[s] / chance[s]:.1f}x |")
    print(f"| retrieval R@1 text->image | {n_ret} images | {1 / n_ret:.4f} | | {t2i:.3f} | {t2i * n_ret:.0f}x |")
    print(f"| retrieval R@1 image->text | | {1 / n_ret:.4f} | | {i2t:.3f} | {i2t * n_ret:.0f}x |")
    for s in ("shapes", "patterns"):
        print(f"{s} per class: " + ", ".join(f"{c} {a:.2f}" for c, a in results[s][1].items()))


if __name__ == "__main__":
    main()
