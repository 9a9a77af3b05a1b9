"""Zero-shot classification: class prompts -> text classifier -> metrics on image embeddings.

Prompt ensembling as CLIP and CLIP_benchmark do it: for each class, the mean of the L2-normalized
embeddings of its prompts, renormalized. As an option, the label-free weighting of "A Simple Zero-shot
Prompt Weighting Technique to Improve Prompt Ensembling in Text-Image Models" (ZPE, Allingham et al.
2023): each template is scored by how confidently its classifier matches the unlabeled test images
(the mean over images of the max class logit), after subtracting each class's mean logit over a
reference image set to cancel word-frequency bias; the templates are then weighted by softmax(score/tau).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from clipstack.errors import DataError
from clipstack.evaluate import metrics as M
from clipstack.evaluate.embed_cache import encode_texts
from clipstack.evaluate.templates import fill


def class_prompt_embeddings(model: torch.nn.Module, tokenizer: Callable, classnames: Sequence[str],
                            templates: Sequence[str] | dict[str, list[str]], batch_size: int = 256,
                            device: str = "cpu", precision: str = "fp32") -> torch.Tensor:
    """Normalized prompt embeddings [C, T, D]. `templates` is a list with `{c}`, or a dict of
    class-specific prompt lists (CuPL style; every class needs the same number of prompts)."""
    if isinstance(templates, dict):
        missing = [c for c in classnames if c not in templates]
        if missing:
            raise DataError(f"class-specific prompts missing for classes {missing[:5]}")
        prompts = [list(templates[c]) for c in classnames]
        if len({len(p) for p in prompts}) != 1:
            raise DataError("class-specific prompts must have the same count for every class")
    else:
        prompts = [[fill(t, c) for t in templates] for c in classnames]
    flat = [p for per_class in prompts for p in per_class]
    emb = encode_texts(model, tokenizer, flat, batch_size, device, precision, desc="encode class prompts")
    return emb.view(len(classnames), len(prompts[0]), -1)


def ensemble(prompt_emb: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """[C, T, D] -> [C, D]: (weighted) mean over templates of normalized embeddings, renormalized."""
    z = torch.nn.functional.normalize(prompt_emb.float(), dim=-1)
    if weights is None:
        mean = z.mean(dim=1)
    else:
        mean = (z * weights.view(1, -1, 1).to(z)).sum(dim=1)
    return torch.nn.functional.normalize(mean, dim=-1)


def zpe_scores(prompt_emb: torch.Tensor, image_emb: torch.Tensor, reference_emb: torch.Tensor | None = None,
               logit_scale: float = 100.0) -> torch.Tensor:
    """One label-free score per template [T]: mean over images of the max bias-corrected class logit.

    reference_emb: image embeddings from the pretraining distribution for the per-class logit mean; when
    None the test images themselves serve as the reference.
    """
    ref = image_emb if reference_emb is None else reference_emb
    scores = []
    for t in range(prompt_emb.shape[1]):
        z = torch.nn.functional.normalize(prompt_emb[:, t].float(), dim=-1)  # [C, D]
        logits = logit_scale * image_emb.float() @ z.T  # [N, C]
        ref_mean = (logit_scale * ref.float() @ z.T).mean(dim=0, keepdim=True)  # [1, C]
        scores.append((logits - ref_mean).max(dim=1).values.mean())
    return torch.stack(scores)


def zpe_weights(scores: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    return torch.softmax(scores / tau, dim=0)


def build_classifier(prompt_emb: torch.Tensor, weighting: str = "mean", image_emb: torch.Tensor | None = None,
                     reference_emb: torch.Tensor | None = None, logit_scale: float = 100.0,
                     tau: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(classifier [C, D], template weights or None). weighting: "mean" or "zpe"."""
    if weighting == "mean":
        return ensemble(prompt_emb), None
    if weighting == "zpe":
        if image_emb is None:
            raise ValueError("zpe weighting needs the test image embeddings")
        w = zpe_weights(zpe_scores(prompt_emb, image_emb, reference_emb, logit_scale), tau)
        return ensemble(prompt_emb, w), w
    raise DataError(f"prompt weighting {weighting!r}: expected 'mean' or 'zpe'")


def classify(image_emb: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Logits [N, C] as CLIP_benchmark computes them (100 x cosine similarity)."""
    return 100.0 * image_emb.float() @ classifier.float().T


def labels_tensor(labels: Sequence, num_classes: int, source: str) -> torch.Tensor:
    target = torch.as_tensor([int(y) for y in labels], dtype=torch.long)
    bad = ((target < 0) | (target >= num_classes)).nonzero().view(-1)
    if len(bad):
        raise DataError(f"{source}: label {int(target[bad[0]])} is outside the {num_classes} class names")
    return target


def multihot(labels: Sequence[Sequence[int]], num_classes: int, source: str) -> torch.Tensor:
    out = torch.zeros(len(labels), num_classes, dtype=torch.long)
    for i, pos in enumerate(labels):
        for c in pos:
            if not 0 <= c < num_classes:
                raise DataError(f"{source}: multilabel index {c} is outside the {num_classes} class names")
            out[i, c] = 1
    return out


def zeroshot_metrics(logits: torch.Tensor, labels: Sequence, num_classes: int, multilabel: bool,
                     source: str) -> tuple[dict[str, float], torch.Tensor | None]:
    """(metrics, confusion matrix [C, C] rows=true, or None for multilabel)."""
    if multilabel:
        target = multihot(labels, num_classes, source)
        return {"mean_average_precision": M.mean_average_precision(logits, target)}, None
    target = labels_tensor(labels, num_classes, source)
    metrics = M.classification_metrics(logits, target, num_classes)
    return metrics, M.confusion_matrix(target, M.predictions(logits), num_classes)
