"""Metric semantics on hand-built cases whose answers are worked out by hand, and parity with
CLIP_benchmark's own metric functions on the same tensors (when clip_benchmark is installed)."""

from __future__ import annotations

import math

import pytest
import torch

from clipstack.evaluate import metrics as M


def test_topk_ties_break_to_lower_index():
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    # Row 0's target (class 0) wins the tie; row 1's target (class 1) ranks second behind class 0.
    assert M.topk_accuracy(logits, torch.tensor([0, 1]), (1, 2)) == [0.5, 1.0]


def test_acc5_is_nan_with_fewer_than_5_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    out = M.classification_metrics(logits, torch.tensor([1, 0, 0]), num_classes=3)
    assert out["acc1"] == pytest.approx(2 / 3)
    assert math.isnan(out["acc5"])
    # class 0: 1 of 2 right; class 1: 1 of 1 -> (0.5 + 1) / 2
    assert out["mean_per_class_recall"] == pytest.approx(0.75)


def test_acc5_with_five_classes():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    # Row 0 target 4 is 5th best (hit at 5), row 1 target 0 is last (miss).
    out = M.classification_metrics(logits, torch.tensor([4, 0]), num_classes=6)
    assert out["acc1"] == 0.0 and out["acc5"] == 0.5


def test_nan_logits_lose():
    # A diverged classifier (NaN logits) must score 0, not 1: NaN never outranks and is never argmax.
    logits = torch.tensor([[float("nan")] * 3, [float("nan"), 2.0, 1.0]])
    out = M.classification_metrics(logits, torch.tensor([0, 0]), num_classes=3)
    assert out["acc1"] == 0.0 and out["mean_per_class_recall"] == 0.0
    # row 0 (all NaN) misses at any k; row 1: class 2 ranks second behind class 1, the NaN is last
    assert M.topk_accuracy(logits, torch.tensor([1, 2]), (1, 2, 3)) == [0.0, 0.5, 0.5]


def test_confusion_matrix_by_hand():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [float("nan"), float("nan")], [3.0, 0.0]])
    pred = M.predictions(logits)
    assert pred.tolist() == [0, 1, -1, 0]
    assert M.confusion_matrix(torch.tensor([0, 0, 1, 1]), pred, 2).tolist() == [[1, 1], [1, 0]]


def test_balanced_accuracy_ignores_a_class_with_no_samples():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 2])  # class 2 is only predicted, class 3 never appears
    assert M.balanced_accuracy(target, pred) == pytest.approx(0.5)


def test_retrieval_by_hand_with_ties_and_several_captions():
    # 3 captions (texts) x 2 images; captions 0 and 1 describe image 0, caption 2 image 1.
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    pos = M.positive_pairs([0, 0, 1], 2)
    out = M.retrieval_metrics_from_scores(scores, pos, recall_k=(1, 2))
    # text->image ranks: 1, 2, 2 (the tie puts image 0 first)
    assert out["image_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert out["image_retrieval_recall@2"] == 1.0
    assert out["image_retrieval_mean_rank"] == pytest.approx(5 / 3)
    assert out["image_retrieval_median_rank"] == 2.0
    # image->text ranks: image 0's best caption is caption 0 (rank 1); image 1's caption ranks 2nd
    assert out["text_retrieval_recall@1"] == 0.5
    assert out["text_retrieval_recall@2"] == 1.0
    assert out["text_retrieval_mean_rank"] == 1.5
    assert out["text_retrieval_median_rank"] == 1.5


def test_several_positives_hit_when_any_is_in_top_k():
    # One image, 5 captions; its two captions rank 3rd and 5th: a hit at k=3, not at k=2.
    scores_i2t = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    pos = torch.tensor([[False, False, True, False, True]])
    ranks = M.first_positive_rank(scores_i2t, pos)
    assert ranks.tolist() == [3]
    assert M.recall_curve(ranks, 4) == [0.0, 0.0, 1.0, 1.0]


def test_retrieval_from_embeddings_by_hand():
    images = torch.eye(3)
    texts = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0.9, 0.1]])
    out = M.retrieval_metrics(texts, images, [0, 1, 2, 1], recall_k=(1,))
    # captions 0 and 3 find their image first; captions 1 and 2 point at each other's image
    assert out["image_retrieval_recall@1"] == 0.5
    # image 0: caption 0 first (hit); image 1: caption 2 (score 1) beats caption 3 (0.9) (miss);
    # image 2: caption 1 (score 1) is not its caption (miss)
    assert out["text_retrieval_recall@1"] == pytest.approx(1 / 3)


def test_map_by_hand_and_empty_class():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    ap = M.average_precision_per_class(scores, targets)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert ap[1] == 0.0  # no positives
    assert M.mean_average_precision(scores, targets) == pytest.approx((1 + 2 / 3) / 4)


def test_modality_gap_by_hand():
    img = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # normalized before taking centroids
    txt = torch.tensor([[0.0, 3.0]])
    assert M.modality_gap(img, txt) == pytest.approx(math.sqrt(2))
    assert M.modality_gap(txt, txt) == 0.0


# --- parity with CLIP_benchmark's functions on the same tensors ------------------------------------

def _random_case(seed=0, n_img=40, caps=3, dim=16):
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    index = [i for i in range(n_img) for _ in range(caps)]
    texts = torch.nn.functional.normalize(images[index] + 0.9 * torch.randn(len(index), dim, generator=g), dim=-1)
    return texts, images, index


def test_retrieval_parity_with_clip_benchmark():
    zr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
    texts, images, index = _random_case()
    ours = M.retrieval_metrics(texts, images, index, recall_k=(1, 5, 10))
    scores = texts @ images.T
    pos = torch.zeros_like(scores, dtype=torch.bool)
    pos[torch.arange(len(scores)), index] = True
    for k in (1, 5, 10):
        ref_t2i = (zr.batchify(zr.recall_at_k, scores, pos, 7, "cpu", k=k) > 0).float().mean().item()
        ref_i2t = (zr.batchify(zr.recall_at_k, scores.T, pos.T, 7, "cpu", k=k) > 0).float().mean().item()
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(ref_t2i, abs=1e-7)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(ref_i2t, abs=1e-7)


def test_classification_parity_with_clip_benchmark_and_sklearn():
    zc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 7, generator=g)
    target = torch.randint(0, 6, (200,), generator=g)  # class 6 has no sample
    logits[torch.arange(200), target] += 1.0
    ours = M.classification_metrics(logits, target, num_classes=7)
    # clip_benchmark 1.6.2's own `accuracy` calls float() on a 1-element array, which NumPy 2 rejects,
    # so top-k accuracy is checked against scikit-learn's definition of the same quantity.
    for k, key in ((1, "acc1"), (5, "acc5")):
        ref_k = sk.top_k_accuracy_score(target.numpy(), logits.numpy(), k=k, labels=list(range(7)))
        assert ours[key] == pytest.approx(ref_k)
    ref = sk.balanced_accuracy_score(target.numpy(), logits.argmax(1).numpy())
    assert ours["mean_per_class_recall"] == pytest.approx(ref)
    multi = (torch.rand(200, 7, generator=g) < 0.3).long()
    multi[:, 3] = 0  # an empty class
    ref_ap = zc.average_precision_per_class(logits, multi)
    assert torch.allclose(M.average_precision_per_class(logits, multi), ref_ap)


# --- prompt ensembling, ZPE weighting and the linear probe on hand-built embeddings ------------------

def test_prompt_ensemble_is_renormalized_mean_of_normalized():
    from clipstack.evaluate.zeroshot import ensemble

    prompts = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])  # 1 class, 2 templates
    assert torch.allclose(ensemble(prompts), torch.tensor([[1.0, 1.0]]) / math.sqrt(2))


def test_zpe_scores_and_weights_by_hand():
    from clipstack.evaluate.zeroshot import build_classifier, zpe_scores, zpe_weights

    images = torch.eye(2)
    # template A separates the two classes; template B gives both classes the same embedding
    prompts = torch.stack([torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]])], dim=1)  # [C=2, T=2, D=2]
    scores = zpe_scores(prompts, images, logit_scale=1.0)
    # A: logits I, class means 0.5 -> max 0.5 for both images; B: [[1,1],[0,0]] - 0.5 -> max 0.5, -0.5
    assert torch.allclose(scores, torch.tensor([0.5, 0.0]))
    w = zpe_weights(scores, tau=1.0)
    assert torch.allclose(w, torch.softmax(torch.tensor([0.5, 0.0]), 0))
    clf, weights = build_classifier(prompts, "zpe", images, logit_scale=1.0)
    assert torch.allclose(weights, w) and torch.allclose(clf.norm(dim=-1), torch.ones(2))


def test_linear_probe_separable_clusters_and_fewshot():
    from clipstack.errors import DataError
    from clipstack.evaluate.linear_probe import ProbeConfig, run_linear_probe

    g = torch.Generator().manual_seed(0)
    centers = torch.eye(6, 16) * 4

    def draw(n):
        y = torch.arange(6).repeat(n)
        return centers[y] + 0.3 * torch.randn(len(y), 16, generator=g), y

    (xtr, ytr), (xte, yte) = draw(8), draw(4)
    out = run_linear_probe(xtr, ytr, xte, yte, 6, ProbeConfig(epochs=20, probe_batch_size=16))["metrics"]
    assert out["lp_acc1"] == 1.0 and out["lp_acc5"] == 1.0 and out["lp_mean_per_class_recall"] == 1.0
    assert out["weight_decay"] in [float(v) for v in __import__("numpy").logspace(-6, 2, 97)]
    few = run_linear_probe(xtr, ytr, xte, yte, 6, ProbeConfig(fewshot_k=2, val_proportion=0))["metrics"]
    assert few["fewshot_k"] == 2 and few["weight_decay"] == 0.0 and few["lp_acc1"] > 0.9
    with pytest.raises(DataError, match="has only 0 training examples"):
        run_linear_probe(xtr, ytr, xte, yte, 7, ProbeConfig(fewshot_k=1, val_proportion=0))
