"""`evaluate_suite`: a model on several sets (or a folder of sets) and tasks, each result written as
CLIP_benchmark JSON with its pictures; what `clipstack eval` runs and what a pipeline calls.

Everything that would fail every set (an unknown `{field}` in the output template, an output folder that
cannot be created, an unreadable templates file) is checked before any image is encoded. A set that
cannot be used (a truncated tar, a missing class list) is reported, skipped, and the others are still
evaluated and written; the run then ends with a `DataError` naming the sets that failed.
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from clipstack.errors import ConfigError, DataError
from clipstack.evaluate.api import TASKS, evaluate
from clipstack.evaluate.datasets import EvalDataset, expand_dataset_paths, load_dataset
from clipstack.evaluate.templates import load_templates
from clipstack.io import json_safe, write_json

log = logging.getLogger(__name__)
DEFAULT_OUTPUT = "{dataset}_{model}_{task}.json"
OUTPUT_FIELDS = ("dataset", "model", "pretrained", "task", "language")


def auto_task(ds: EvalDataset, hint: str | None) -> str:
    """The set's own suggestion (index.json) when it names a usable task, else by the set's kind."""
    if hint in TASKS and not (hint == "linear_probe" and "train" not in ds.splits):
        return hint
    return "zeroshot_retrieval" if ds.kind == "retrieval" else "zeroshot_classification"


def _slug(text: str) -> str:
    return text.strip("/").replace("/", "_") if text else ""


def check_output_template(output: str | os.PathLike) -> None:
    """ConfigError unless `output` is a path template using only the known fields."""
    template = str(output)
    known = " ".join(f"{{{f}}}" for f in OUTPUT_FIELDS)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exn:  # a lone { or }
        raise ConfigError(f"--output {template}: not a valid path template ({exn}); use {known}, "
                          "and {{ }} for literal braces") from None
    unknown = [n for n in names if n not in OUTPUT_FIELDS]
    if unknown:
        raise ConfigError(f"--output {template}: unknown field {{{unknown[0]}}}; the fields are {known}")
    try:
        template.format(**dict.fromkeys(OUTPUT_FIELDS, "x"))
    except (ValueError, KeyError, IndexError, AttributeError) as exn:  # a bad format spec such as {task:d}
        raise ConfigError(f"--output {template}: not a valid path template ({exn})") from None


def _check_output_folder(out: Path) -> None:
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exn:
        raise ConfigError(f"--output {out}: cannot create folder {folder} ({exn.strerror or exn})") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--output {out}: folder {folder} is not writable")
    if out.is_dir():
        raise ConfigError(f"--output {out}: is a folder; the template must name a .json file")


def _log_error(label: str, err: DataError) -> None:
    log.error("skipping %s: %s", label, err)


def evaluate_suite(model: torch.nn.Module, tokenizer: Callable, preprocess: Callable,
                   datasets: Sequence[str | Path], tasks: Sequence[str] = ("auto",),
                   output: str | Path | None = DEFAULT_OUTPUT, plots: bool = True, layout: str | None = None,
                   on_error: Callable[[str, DataError], None] = _log_error,
                   **opts: Any) -> Iterator[tuple[dict, Path | None]]:
    """Yield (result, json_path) per (set, task); `datasets` may name folders of sets (synth's OUT/eval).

    output: a path template with {dataset} {model} {pretrained} {task} {language}, or None to write
    nothing. A set or task that fails with a DataError is passed to `on_error` ("set task" label, error)
    and skipped; after the others, a DataError names every failure (with a single evaluation, its own
    error is raised as it is). opts go to `evaluate` (model_name,
    pretrained, cache_dir, batch_size, ...)."""
    if output is not None:
        check_output_template(output)
    if isinstance(opts.get("templates"), str | Path):
        load_templates(opts["templates"])  # a bad templates file fails every set: say so before any work
    model_name = opts.get("model_name") or getattr(model, "name", None) or type(model).__name__
    pretrained = opts.get("pretrained") or ""
    failed: list[str] = []

    def fail(label: str, err: DataError) -> None:
        failed.append(label)
        on_error(label, err)

    plan: list[tuple[EvalDataset, str, Path | None]] = []
    unloadable: list[tuple[str, DataError]] = []
    for path, hint in expand_dataset_paths(list(datasets)):
        try:
            ds = load_dataset(path, layout)
        except DataError as err:
            unloadable.append((Path(path).name or str(path), err))
            continue
        for task in [auto_task(ds, hint) if t == "auto" else t for t in tasks]:
            out = None
            if output is not None:
                out = Path(str(output).format(dataset=_slug(ds.name), model=_slug(model_name),
                                              pretrained=_slug(Path(pretrained).name if pretrained else "none"),
                                              task=task, language=opts.get("language", "en")))
                _check_output_folder(out)
            plan.append((ds, task, out))
    total = len(plan) + len(unloadable)
    if total == 1 and unloadable:  # nothing else to go on to: the error itself is the whole story
        raise unloadable[0][1]
    for label, err in unloadable:
        fail(label, err)
    for ds, task, out in plan:
        try:
            result = evaluate(model, tokenizer, preprocess, ds, task,
                              plots=out.with_suffix("") if (out is not None and plots) else None, **opts)
        except DataError as err:  # this set is unusable; the others still get evaluated
            if total == 1:
                raise
            fail(f"{ds.name} {task}", err)
            continue
        if out is not None:
            write_json(out, json_safe(result))  # CLIP_benchmark's bare NaN (acc5 below 5 classes) as null
        yield result, out
    if failed:
        rest = ("nothing else to evaluate" if len(failed) == total
                else "the other results were written" if output is not None else "the others completed")
        raise DataError(f"{len(failed)} of {total} evaluations failed and were skipped: {', '.join(failed)}; "
                        f"{rest}")
