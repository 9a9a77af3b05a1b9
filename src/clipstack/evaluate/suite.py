"""`evaluate_suite`: a model on several sets (or a folder of sets) and tasks, each result written as
CLIP_benchmark JSON with its pictures; what `clipstack eval` runs and what a pipeline calls."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from clipstack.evaluate.api import TASKS, evaluate
from clipstack.evaluate.datasets import EvalDataset, expand_dataset_paths, load_dataset
from clipstack.io import write_json

DEFAULT_OUTPUT = "{dataset}_{model}_{task}.json"


def auto_task(ds: EvalDataset, hint: str | None) -> str:
    """The set's own suggestion (index.json) when it names a usable task, else by the set's kind."""
    if hint in TASKS and not (hint == "linear_probe" and "train" not in ds.splits):
        return hint
    return "zeroshot_retrieval" if ds.kind == "retrieval" else "zeroshot_classification"


def _slug(text: str) -> str:
    return text.strip("/").replace("/", "_") if text else ""


def evaluate_suite(model: torch.nn.Module, tokenizer: Callable, preprocess: Callable,
                   datasets: Sequence[str | Path], tasks: Sequence[str] = ("auto",),
                   output: str | Path | None = DEFAULT_OUTPUT, plots: bool = True, layout: str | None = None,
                   **opts: Any) -> Iterator[tuple[dict, Path | None]]:
    """Yield (result, json_path) per (set, task); `datasets` may name folders of sets (synth's OUT/eval).

    output: a path template with {dataset} {model} {pretrained} {task} {language}, or None to write
    nothing. opts go to `evaluate` (model_name, pretrained, cache_dir, batch_size, ...)."""
    model_name = opts.get("model_name") or getattr(model, "name", None) or type(model).__name__
    pretrained = opts.get("pretrained") or ""
    for path, hint in expand_dataset_paths(list(datasets)):
        ds = load_dataset(path, layout)
        for task in [auto_task(ds, hint) if t == "auto" else t for t in tasks]:
            out = None
            if output is not None:
                out = Path(str(output).format(dataset=_slug(ds.name), model=_slug(model_name),
                                              pretrained=_slug(Path(pretrained).name if pretrained else "none"),
                                              task=task, language=opts.get("language", "en")))
            result = evaluate(model, tokenizer, preprocess, ds, task,
                              plots=out.with_suffix("") if (out is not None and plots) else None, **opts)
            if out is not None:
                write_json(out, result)
            yield result, out
