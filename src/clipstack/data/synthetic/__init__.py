"""Synthetic data: a seeded, messy, scored image-text pool (the crawl stand-in) and clean eval sets.

`generate(out_dir, samples=20000, seed=0, ...)` writes `pool/` shards in the ingest layout, a hidden
`ground_truth.parquet` (defect labels and concepts per key) and `eval/<set>/` in CLIP_benchmark's
WebDataset layout. Imports here stay light: numpy and PIL load only when generating.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_RATES", "generate", "write_eval_sets", "contact_sheet"]


def __getattr__(name: str) -> Any:
    if name == "generate":
        from clipstack.data.synthetic.writer import generate
        return generate
    if name == "DEFAULT_RATES":
        from clipstack.data.synthetic.defects import DEFAULT_RATES
        return DEFAULT_RATES
    if name == "write_eval_sets":
        from clipstack.data.synthetic.evalsets import write_eval_sets
        return write_eval_sets
    if name == "contact_sheet":
        from clipstack.data.synthetic.preview import contact_sheet
        return contact_sheet
    raise AttributeError(f"module 'clipstack.data.synthetic' has no attribute {name!r}")
