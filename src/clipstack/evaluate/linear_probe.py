"""Linear probe on frozen image features: logistic regression in torch, weight decay picked on a
validation split, optional few-shot k, as CLIP_benchmark runs it.

CLIP_benchmark's recipe: a `torch.nn.Linear` trained with AdamW and a cosine learning-rate schedule
(lr 0.1, 10 epochs, batch 64 by default); the weight decay is searched over logspace(-6, 2, 97),
first on 7 evenly spaced points, then by halving steps (8, 4, 2, 1) around the best, keeping the
first best on ties; for full-data runs the final model is trained on train + validation. The same
procedure serves FLIP-style attribute evaluation (frozen towers + one linear layer). With lr 0.1 the
upper end of that grid (lr x wd > 1) makes decoupled weight decay diverge; such a run's NaN logits score
0 on validation, so the search never picks it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from clipstack.errors import DataError
from clipstack.evaluate import metrics as M


@dataclass
class ProbeConfig:
    lr: float = 0.1
    epochs: int = 10
    probe_batch_size: int = 64  # CLIP_benchmark passes its --batch_size (default 64) to the probe
    seed: int = 0
    fewshot_k: int = -1
    val_proportion: float = 0.2  # used when the set has no val split; 0 disables the search (wd 0)
    normalize: bool = True


def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                 cfg: ProbeConfig) -> torch.nn.Linear:
    """Softmax regression trained with AdamW (decoupled weight decay) and a cosine schedule.

    The AdamW update is written out (it is the same arithmetic as torch.optim.AdamW's defaults) because
    creating a torch.optim optimizer imports torch._dynamo, ~4 s per process on a small CPU, which would
    dominate a probe on a few thousand cached features.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = torch.nn.Linear(x.shape[1], num_classes)
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    steps_per_epoch = max(1, math.ceil(len(x) / cfg.probe_batch_size))
    total = cfg.epochs * steps_per_epoch
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), cfg.probe_batch_size):
            idx = order[start:start + cfg.probe_batch_size]
            lr = 0.5 * (1 + math.cos(math.pi * step / total)) * cfg.lr  # cosine, no warmup
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            grads = torch.autograd.grad(loss, params)
            step += 1
            with torch.no_grad():
                for p, gr, m_, v_ in zip(params, grads, m, v):
                    p.mul_(1 - lr * weight_decay)
                    m_.mul_(beta1).add_(gr, alpha=1 - beta1)
                    v_.mul_(beta2).addcmul_(gr, gr, value=1 - beta2)
                    denom = (v_ / (1 - beta2 ** step)).sqrt_().add_(eps)
                    p.addcdiv_(m_, denom, value=-lr / (1 - beta1 ** step))
    return model


def fewshot_indices(y: torch.Tensor, k: int, seed: int, num_classes: int,
                    classnames: list[str] | None = None) -> torch.Tensor:
    """k random examples per class (all when k < 0); a class with fewer than k is an error."""
    if k < 0:
        return torch.arange(len(y))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    counts: dict[int, int] = {}
    keep = []
    for p in perm.tolist():
        c = int(y[p])
        if counts.get(c, 0) < k:
            counts[c] = counts.get(c, 0) + 1
            keep.append(p)
    short = {c: counts.get(c, 0) for c in range(num_classes) if counts.get(c, 0) < k}
    if short:
        c, n = next(iter(short.items()))
        name = classnames[c] if classnames and c < len(classnames) else c
        raise DataError(f"few-shot k={k}: class {name!r} has only {n} training examples")
    return torch.tensor(sorted(keep))


def search_weight_decay(xtr, ytr, xval, yval, num_classes: int, cfg: ProbeConfig) -> float:
    wd_list = np.logspace(-6, 2, num=97).tolist()
    accs: dict[int, float] = {}

    def acc_at(i: int) -> float:
        if i not in accs:
            model = train_linear(xtr, ytr, num_classes, wd_list[i], cfg)
            with torch.no_grad():
                accs[i] = M.topk_accuracy(model(xval), yval, (1,))[0]
        return accs[i]

    def peak(idxs: list[int]) -> int:
        best, best_acc = idxs[0], -1.0
        for i in idxs:
            if acc_at(i) > best_acc:
                best, best_acc = i, acc_at(i)
        return best

    best = peak(list(range(0, 97, 16)))
    span = 8
    while span > 0:
        best = peak([max(best - span, 0), best, min(best + span, 96)])
        span //= 2
    return wd_list[best]


@contextlib.contextmanager
def _threads_for(numel: int):
    # A probe on a few thousand features is many tiny ops; on a loaded machine torch's thread pool
    # spends more time synchronising than computing (measured: 77 ms vs <1 ms per step), so go single.
    before = torch.get_num_threads()
    if numel < 4_000_000:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     num_classes: int, cfg: ProbeConfig, val_x: torch.Tensor | None = None,
                     val_y: torch.Tensor | None = None, classnames: list[str] | None = None) -> dict:
    """CLIP_benchmark's linear-probe metrics dict (`lp_acc1`, `lp_acc5`, `lp_mean_per_class_recall`,
    `weight_decay`, `epochs`, `seed`, `fewshot_k`, `normalized`) and the confusion matrix."""
    if cfg.normalize:
        train_x, test_x = (torch.nn.functional.normalize(t.float(), dim=-1) for t in (train_x, test_x))
        if val_x is not None:
            val_x = torch.nn.functional.normalize(val_x.float(), dim=-1)
    if val_x is None and cfg.val_proportion > 0:
        perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))
        n_val = max(1, int(round(len(train_x) * cfg.val_proportion)))
        if n_val >= len(train_x):
            raise DataError(f"linear probe: {len(train_x)} training examples are too few to hold out "
                            f"{cfg.val_proportion:.0%} for validation")
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
        val_x, val_y, train_x, train_y = train_x[val_idx], train_y[val_idx], train_x[tr_idx], train_y[tr_idx]
    with _threads_for(train_x.numel()):
        return _probe(train_x, train_y, test_x, test_y, num_classes, cfg, val_x, val_y, classnames)


def _probe(train_x, train_y, test_x, test_y, num_classes, cfg, val_x, val_y, classnames) -> dict:
    keep = fewshot_indices(train_y, cfg.fewshot_k, cfg.seed, num_classes, classnames)
    xtr, ytr = train_x[keep], train_y[keep]
    if val_x is not None:
        wd = search_weight_decay(xtr, ytr, val_x, val_y, num_classes, cfg)
        if cfg.fewshot_k < 0:  # full-data runs train the final model on train + val, as CLIP_benchmark
            xtr, ytr = torch.cat([xtr, val_x]), torch.cat([ytr, val_y])
    else:
        wd = 0.0
    model = train_linear(xtr, ytr, num_classes, wd, cfg)
    with torch.no_grad():
        logits = model(test_x)
    cls = M.classification_metrics(logits, test_y, num_classes)
    confusion = M.confusion_matrix(test_y, M.predictions(logits), num_classes)
    metrics = {"lp_acc1": cls["acc1"], "lp_acc5": cls["acc5"],
               "lp_mean_per_class_recall": cls["mean_per_class_recall"], "weight_decay": wd,
               "epochs": cfg.epochs, "seed": cfg.seed, "fewshot_k": cfg.fewshot_k, "normalized": cfg.normalize}
    return {"metrics": metrics, "confusion": confusion}
