"""`evaluate(model, tokenizer, preprocess, dataset, task, **opts)`: one task on one set, returned as the
result dict CLIP_benchmark writes (`dataset, model, pretrained, task, metrics, language`).

Besides the task's own metrics, every result carries the modality gap (distance between the image and
text embedding centroids), `logit_scale` (the multiplier, exp of the stored log value) and `logit_bias`
when the model has one, so a table row says how the embedding space looked, not only how it scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipstack.errors import ConfigError, DataError
from clipstack.evaluate import metrics as M
from clipstack.evaluate.datasets import EvalDataset, load_dataset
from clipstack.evaluate.embed_cache import EmbedCache, SplitEmbeddings, split_embeddings
from clipstack.evaluate.linear_probe import ProbeConfig, run_linear_probe
from clipstack.evaluate.templates import load_templates, normalize_templates

log = logging.getLogger(__name__)
TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")


@dataclass
class EvalOptions:
    model_name: str | None = None
    pretrained: str = ""
    language: str = "en"
    split: str = "test"
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 64
    workers: int = 0  # decode/preprocess threads per batch
    device: str | None = None
    precision: str = "fp32"  # "fp32" | "amp" (fp16 autocast on CUDA) | "amp_bf16"
    templates: str | Sequence[str] | None = None  # None: the set's own, else CLIP's 80
    prompt_weighting: str = "mean"  # "mean" | "zpe"
    zpe_tau: float = 1.0
    # ZPE's reference images (pretraining distribution): embeddings, or any dataset path (e.g. pool shards)
    zpe_reference: torch.Tensor | str | Path | None = None
    recall_k: Sequence[int] = (1, 5, 10)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    cache_dir: str | Path | None = None
    model_id: str | None = None  # cache identity; default: a fingerprint of the weights
    layout: str | None = None
    plots: str | Path | None = None  # path prefix for PNGs; None: no pictures
    dataset_name: str | None = None
    dropped: dict = field(default_factory=dict)  # filled during the run: "split/reason" -> count


def evaluate(model: torch.nn.Module, tokenizer: Callable, preprocess: Callable, dataset: str | Path | EvalDataset,
             task: str, **opts: Any) -> dict:
    """Run `task` on `dataset` and return the CLIP_benchmark result dict (see `EvalOptions` for opts)."""
    probe_keys = set(ProbeConfig.__dataclass_fields__)
    probe = ProbeConfig(**{k: opts.pop(k) for k in list(opts) if k in probe_keys})
    unknown = set(opts) - set(EvalOptions.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"evaluate(): unknown options {sorted(unknown)}")
    o = EvalOptions(probe=probe, **opts)
    if task not in TASKS:
        raise ConfigError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    ds = dataset if isinstance(dataset, EvalDataset) else load_dataset(dataset, o.layout)
    if o.device is None:
        o.device = str(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        metrics, extras = _TASK_RUNNERS[task](model, tokenizer, preprocess, ds, o)
    finally:
        model.train(was_training)
    metrics.update(_scale_metrics(model))
    if o.dropped:  # samples skipped as unusable (undecodable image, missing label...), so a row says so
        metrics["dropped_samples"] = sum(o.dropped.values())
    result = {
        "dataset": o.dataset_name or ds.name,
        "model": o.model_name or getattr(model, "name", None) or type(model).__name__,
        "pretrained": o.pretrained or "",
        "task": task,
        "metrics": metrics,
        "language": o.language,
    }
    if o.plots is not None:
        from clipstack.evaluate import plots

        plots.write_task_plots(task, Path(o.plots), extras, ds)
    return result


def _scale_metrics(model: torch.nn.Module) -> dict[str, float]:
    out = {}
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        out["logit_scale"] = float(scale.detach().float().exp())
    bias = getattr(model, "logit_bias", None)
    if isinstance(bias, torch.Tensor):
        out["logit_bias"] = float(bias.detach().float())
    return out


def _embeddings(model, tokenizer, preprocess, ds: EvalDataset, split: str, o: EvalOptions,
                count_drops: bool = True) -> SplitEmbeddings:
    emb = split_embeddings(model, preprocess, tokenizer, ds, split, cache=EmbedCache(o.cache_dir),
                           model_id=o.model_id, batch_size=o.batch_size, device=o.device, precision=o.precision,
                           workers=o.workers)
    if emb.dropped:
        log.warning("%s/%s: skipped %d samples (%s)", ds.name, split, sum(emb.dropped.values()), emb.dropped)
        if count_drops:
            o.dropped.update({f"{ds.name}/{split}/{reason}": n for reason, n in emb.dropped.items()})
    return emb


def _templates(ds: EvalDataset, o: EvalOptions) -> list[str]:
    if o.templates is None:
        return list(ds.templates) if ds.templates else load_templates("openai_imagenet")
    if isinstance(o.templates, str | Path):
        return load_templates(o.templates)
    return normalize_templates(list(o.templates))


def _require_classnames(ds: EvalDataset, task: str) -> list[str]:
    if ds.kind == "retrieval":
        raise DataError(f"{ds.root}: a retrieval set (dataset_type.txt = retrieval) cannot be used for {task}")
    if not ds.classnames:
        raise DataError(f"{ds.root}: no class names (classnames.txt, one name per line) for {task}")
    return ds.classnames


def _prompt_embeddings(model, tokenizer, ds, o):
    from clipstack.evaluate.zeroshot import class_prompt_embeddings

    classnames = _require_classnames(ds, "zeroshot_classification")
    return class_prompt_embeddings(model, tokenizer, classnames, _templates(ds, o), max(o.batch_size, 256),
                                   o.device, o.precision)


def _run_zeroshot(model, tokenizer, preprocess, ds: EvalDataset, o: EvalOptions):
    from clipstack.evaluate import zeroshot as Z

    classnames = _require_classnames(ds, "zeroshot_classification")
    emb = _embeddings(model, tokenizer, preprocess, ds, o.split, o)
    prompt_emb = _prompt_embeddings(model, tokenizer, ds, o)
    scale = _scale_metrics(model).get("logit_scale", 100.0)
    reference = o.zpe_reference
    if o.prompt_weighting == "zpe" and isinstance(reference, str | Path):
        ref_ds = load_dataset(reference)
        ref_split = "test" if "test" in ref_ds.splits else next(iter(ref_ds.splits))
        reference = _embeddings(model, tokenizer, preprocess, ref_ds, ref_split, o, count_drops=False).image_emb
    classifier, weights = Z.build_classifier(prompt_emb, o.prompt_weighting, emb.image_emb, reference,
                                             scale, o.zpe_tau)
    logits = Z.classify(emb.image_emb, classifier)
    metrics, confusion = Z.zeroshot_metrics(logits, emb.labels, len(classnames), ds.kind == "multilabel",
                                            f"{ds.root}/{o.split}")
    metrics["modality_gap"] = M.modality_gap(emb.image_emb, prompt_emb.reshape(-1, prompt_emb.shape[-1]))
    if weights is not None:
        metrics["zpe_max_template_weight"] = float(weights.max())
    return metrics, {"confusion": confusion, "classnames": classnames}


def _run_retrieval(model, tokenizer, preprocess, ds: EvalDataset, o: EvalOptions):
    from clipstack.evaluate.retrieval import run_retrieval

    if ds.kind != "retrieval":
        raise DataError(f"{ds.root}: zeroshot_retrieval needs captions per image (a retrieval set: "
                        f"dataset_type.txt = retrieval, or a CSV/parquet table); this is a {ds.kind} set")
    emb = _embeddings(model, tokenizer, preprocess, ds, o.split, o)
    res = run_retrieval(emb.text_emb, emb.image_emb, emb.texts_image_index, o.recall_k)
    metrics = dict(res.metrics)
    metrics["modality_gap"] = M.modality_gap(emb.image_emb, emb.text_emb)
    return metrics, {"retrieval": res, "emb": emb, "dataset": ds, "split": o.split}


def _run_linear_probe(model, tokenizer, preprocess, ds: EvalDataset, o: EvalOptions):
    from clipstack.evaluate.zeroshot import labels_tensor

    classnames = _require_classnames(ds, "linear_probe")
    if ds.kind == "multilabel":
        raise DataError(f"{ds.root}: linear_probe supports single-label sets only")
    if o.train_split not in ds.splits:
        raise DataError(f"{ds.root}: linear_probe needs a {o.train_split!r} split beside {o.split!r} "
                        f"(found: {', '.join(ds.splits)})")
    n = len(classnames)
    embs = {s: _embeddings(model, tokenizer, preprocess, ds, s, o) for s in (o.train_split, o.split)}
    tr, te = embs[o.train_split], embs[o.split]
    ytr = labels_tensor(tr.labels, n, f"{ds.root}/{o.train_split}")
    yte = labels_tensor(te.labels, n, f"{ds.root}/{o.split}")
    val_x = val_y = None
    if o.val_split in ds.splits and o.val_split not in (o.split, o.train_split):
        va = _embeddings(model, tokenizer, preprocess, ds, o.val_split, o)
        val_x, val_y = va.image_emb, labels_tensor(va.labels, n, f"{ds.root}/{o.val_split}")
    res = run_linear_probe(tr.image_emb, ytr, te.image_emb, yte, n, o.probe, val_x, val_y, classnames)
    metrics = res["metrics"]
    prompt_emb = _prompt_embeddings(model, tokenizer, ds, o)
    metrics["modality_gap"] = M.modality_gap(te.image_emb, prompt_emb.reshape(-1, prompt_emb.shape[-1]))
    if math.isnan(metrics["lp_acc5"]):
        log.info("%s: fewer than 5 classes, lp_acc5 is NaN", ds.name)
    return metrics, {"confusion": res["confusion"], "classnames": classnames}


_TASK_RUNNERS = {
    "zeroshot_classification": _run_zeroshot,
    "zeroshot_retrieval": _run_retrieval,
    "linear_probe": _run_linear_probe,
}
