"""Evaluation: zero-shot classification, zero-shot retrieval and linear probes with CLIP_benchmark's
metric semantics and result JSON.

    from clipstack.evaluate import evaluate
    result = evaluate(model, tokenizer, preprocess, "out/eval/colors", "zeroshot_classification")
    result["metrics"]["acc1"]
    for result, path in evaluate_suite(model, tokenizer, preprocess, ["out/eval"], output="res/{dataset}_{task}.json"):
        print(result["dataset"], result["task"], result["metrics"])  # every set in out/eval, task from its index

Heavy modules (torch, matplotlib) load on first use, so importing this package stays light.
"""

from __future__ import annotations

from clipstack.lazy import lazy_attributes

_LAZY = {
    "evaluate": "clipstack.evaluate.api",
    "evaluate_suite": "clipstack.evaluate.suite",
    "TASKS": "clipstack.evaluate.api",
    "load_dataset": "clipstack.evaluate.datasets",
    "load_results": "clipstack.evaluate.table",
    "write_table": "clipstack.evaluate.table",
    "load_templates": "clipstack.evaluate.templates",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = list(_LAZY)
