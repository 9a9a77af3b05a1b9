"""Curation: MetaCLIP metadata matching and balancing, DataComp-style filters, dedup, subsets, ledger.

    from clipstack.curate import CurateConfig, curate
    result = curate("pool/", "curated/", CurateConfig(steps=["text", "basic", "exact", "balance"],
                                                      metadata="metadata.json", balance_t=20000))
    # curated/shards/*.tar, curated/subset.npy (sorted 128-bit uids), curated/ledger.parquet, _stats.json

Training applies a subset without resharding: `in_subset([uid_for(key, meta) ...], load_subset(path))`.
Heavy imports (numpy, pyarrow, torch) happen inside the functions, so importing this package is light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipstack.lazy import lazy_attributes

__all__ = ["CurateConfig", "Matcher", "curate", "in_subset", "load_subset", "uid_for", "write_subset"]

_WHERE = {
    "CurateConfig": "clipstack.curate.pipeline", "curate": "clipstack.curate.pipeline",
    "Matcher": "clipstack.curate.matching", "in_subset": "clipstack.curate.uids",
    "load_subset": "clipstack.curate.uids", "uid_for": "clipstack.curate.uids",
    "write_subset": "clipstack.curate.uids",
}

if TYPE_CHECKING:
    from clipstack.curate.matching import Matcher
    from clipstack.curate.pipeline import CurateConfig, curate
    from clipstack.curate.uids import in_subset, load_subset, uid_for, write_subset


__getattr__ = lazy_attributes(__name__, _WHERE)
