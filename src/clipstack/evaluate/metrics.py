"""Evaluation metrics on embeddings and logits, with CLIP_benchmark's semantics (pure torch, no I/O).

Semantics pinned to CLIP_benchmark so numbers drop into existing tables:
- top-k accuracy counts a hit when the target is among the k highest logits; `acc5` is NaN when the
  label space has fewer than 5 classes;
- mean per-class recall is balanced accuracy as scikit-learn defines it: the mean of per-class recall
  over the classes that occur in the targets (a class with no test sample is left out, not counted 0);
- retrieval recall@k is, per query, 1 when at least one positive is among the top k, averaged over
  queries; `scores = texts_emb @ images_emb.T`;
- multilabel mAP is the mean over classes of average precision (a class without positives gives 0).
Ties: CLIP_benchmark relies on `torch.topk`, whose order among equal scores is unspecified; here equal
scores are ordered by lower candidate index first, so results are deterministic and identical to
CLIP_benchmark wherever scores are distinct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1,)) -> list[float]:
    """Fraction of rows whose target is among the k best logits, for each k (ties: lower index first)."""
    logits = logits.float()
    target = target.long().view(-1, 1)
    n = len(target)
    if n == 0:
        return [float("nan") for _ in ks]
    # Rank of the target column: candidates strictly better, plus equal ones at a lower index.
    # NaN never outranks anything, and a NaN target score is a miss (a diverged classifier scores 0).
    target_score = logits.gather(1, target)
    cols = torch.arange(logits.shape[1]).view(1, -1)
    ahead = (logits > target_score) | ((logits == target_score) & (cols < target))
    rank = ahead.sum(1) + 1
    rank[target_score.view(-1).isnan()] = logits.shape[1] + 1
    return [float((rank <= k).double().mean()) for k in ks]


def balanced_accuracy(target: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean recall over the classes present in `target` (scikit-learn's balanced_accuracy_score)."""
    target = target.long().view(-1)
    pred = pred.long().view(-1)
    classes = torch.unique(target)
    if len(classes) == 0:
        return float("nan")
    recalls = [float((pred[target == c] == c).double().mean()) for c in classes.tolist()]
    return sum(recalls) / len(recalls)


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Argmax per row, where a NaN logit loses and an all-NaN row predicts nothing (-1)."""
    pred = logits.float().nan_to_num(nan=-torch.inf).argmax(dim=1)
    pred[logits.isnan().all(dim=1)] = -1
    return pred


def confusion_matrix(target: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [true, predicted]; rows without a prediction (-1) are left out."""
    keep = pred >= 0
    out = torch.zeros(num_classes, num_classes, dtype=torch.long)
    out.index_put_((target[keep].long(), pred[keep].long()), torch.ones(int(keep.sum()), dtype=torch.long),
                   accumulate=True)
    return out


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """`acc1`, `acc5` (NaN with fewer than 5 classes) and `mean_per_class_recall`."""
    pred = predictions(logits)
    if num_classes >= 5:
        acc1, acc5 = topk_accuracy(logits, target, (1, 5))
    else:
        (acc1,), acc5 = topk_accuracy(logits, target, (1,)), float("nan")
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": balanced_accuracy(target, pred)}


def average_precision_per_class(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AP for each class column of a multilabel problem: mean precision at each positive's rank.

    Ranks follow descending score, equal scores by lower row index first. A class with no positive
    gets AP 0 (as in CLIP_benchmark, whose mAP averages over all classes).
    """
    scores = scores.float()
    targets = targets.bool()
    n = scores.shape[0]
    ap = torch.zeros(scores.shape[1])
    ranks = torch.arange(1, n + 1, dtype=torch.float32)
    for c in range(scores.shape[1]):
        order = torch.sort(scores[:, c], descending=True, stable=True).indices
        truth = targets[order, c]
        precision = truth.float().cumsum(0) / ranks
        ap[c] = precision[truth].sum() / max(float(truth.sum()), 1.0)
    return ap


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    return float(average_precision_per_class(scores, targets).mean())


def first_positive_rank(scores: torch.Tensor, positives: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """1-based rank of the best-ranked positive candidate in each row of `scores` (queries x candidates).

    Order: descending score, equal scores by lower candidate index. A row with no positive gets rank
    `n_candidates + 1`, so it never counts as a hit. Batched over rows to bound memory.
    """
    out = []
    cols = torch.arange(scores.shape[1]).view(1, -1)
    for start in range(0, scores.shape[0], batch_size):
        s = scores[start:start + batch_size].float()
        p = positives[start:start + batch_size].bool()
        masked = s.masked_fill(~p, -math.inf)
        best = masked.max(dim=1, keepdim=True).values
        # The first positive in (score desc, index asc) order: lowest index among positives at `best`.
        at_best = p & (s == best)
        first_idx = torch.where(at_best, cols, s.shape[1]).min(dim=1, keepdim=True).values
        ahead = (s > best) | ((s == best) & (cols < first_idx))
        rank = ahead.sum(1) + 1
        rank[~p.any(1)] = s.shape[1] + 1
        out.append(rank)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def positive_pairs(texts_image_index: Sequence[int] | torch.Tensor, n_images: int) -> torch.Tensor:
    """Bool [n_texts, n_images]: text t is a positive for image `texts_image_index[t]`."""
    idx = torch.as_tensor(texts_image_index, dtype=torch.long)
    pos = torch.zeros(len(idx), n_images, dtype=torch.bool)
    pos[torch.arange(len(idx)), idx] = True
    return pos


def retrieval_metrics(texts_emb: torch.Tensor, images_emb: torch.Tensor,
                      texts_image_index: Sequence[int] | torch.Tensor,
                      recall_k: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways plus mean and median rank, from normalized embeddings.

    `image_retrieval_*` is text -> image (one query per caption), `text_retrieval_*` is image -> text
    (one query per image; a hit when any of its captions is in the top k).
    """
    scores = texts_emb.float() @ images_emb.float().T
    pos = positive_pairs(texts_image_index, images_emb.shape[0])
    return retrieval_metrics_from_scores(scores, pos, recall_k)


def retrieval_metrics_from_scores(scores: torch.Tensor, pos: torch.Tensor,
                                  recall_k: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    return retrieval_metrics_from_ranks(first_positive_rank(scores, pos), first_positive_rank(scores.T, pos.T),
                                        recall_k)


def retrieval_metrics_from_ranks(t2i: torch.Tensor, i2t: torch.Tensor,
                                 recall_k: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k, mean and median rank from first-positive ranks (text->image, image->text)."""
    metrics: dict[str, float] = {}
    for k in recall_k:
        metrics[f"image_retrieval_recall@{k}"] = float((t2i <= k).double().mean())
        metrics[f"text_retrieval_recall@{k}"] = float((i2t <= k).double().mean())
    for name, ranks in (("image_retrieval", t2i), ("text_retrieval", i2t)):
        metrics[f"{name}_mean_rank"] = float(ranks.double().mean())
        metrics[f"{name}_median_rank"] = _median(ranks)
    return metrics


def recall_curve(ranks: torch.Tensor, max_k: int) -> list[float]:
    """Recall@k for k = 1..max_k from first-positive ranks (the recall@K plot)."""
    return [float((ranks <= k).double().mean()) for k in range(1, max_k + 1)]


def _median(ranks: torch.Tensor) -> float:
    # The usual definition (mean of the two middle values), not torch.median's lower middle.
    if len(ranks) == 0:
        return float("nan")
    return float(ranks.double().quantile(0.5))


def modality_gap(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Euclidean distance between the centroids of L2-normalized image and text embeddings."""
    img = torch.nn.functional.normalize(image_emb.float(), dim=-1).mean(0)
    txt = torch.nn.functional.normalize(text_emb.float(), dim=-1).mean(0)
    return float((img - txt).norm())
