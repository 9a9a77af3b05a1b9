"""`generate`: write the synthetic pool (in parallel, resumable), its hidden ground truth, and eval sets.

Output layout under `out_dir`:
  pool/{shard:05d}.tar|.parquet|_stats.json, pool/sizes.json   the crawl stand-in (ingest layout)
  ground_truth.parquet                                         hidden labels, one row per sample
  eval/<set>/...                                               clean sets, CLIP_benchmark WDS layout
  synth.json                                                   the config and the counts
Workers each write whole shards; a shard's ground-truth part is written after its tar, so a shard is
done when both exist and an interrupted run resumes from there. Every option and the output folder are
checked before anything is written: a bad value, a file where the folder should be, or a non-empty
folder that is not a synth output is one `ConfigError`/`DataError` naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

from clipstack.data.shards import shard_done, shard_name, write_shard, write_sizes
from clipstack.data.synthetic.pool import PoolConfig, PoolGenerator, gt_schema
from clipstack.errors import ConfigError, DataError
from clipstack.io import atomic_path, ensure_folder, read_json, write_json
from clipstack.progress import progress

PARTS_DIR = ".ground_truth_parts"
SYNTH_FILE = "synth.json"
# 100x the default eval sets is 378,000 images (1x: 3,780); more is a typo, not an eval set.
MAX_EVAL_SCALE = 100.0


def _write_one_shard(cfg_dict: dict[str, Any], shard: int, pool_dir: str, parts_dir: str) -> tuple[int, int, dict]:
    """Worker: generate and write shard `shard` plus its ground-truth part; return (shard, n, counts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = PoolConfig(**cfg_dict)
    gen = PoolGenerator(cfg)
    start = shard * cfg.shard_size
    stop = min(cfg.samples, start + cfg.shard_size)
    rows: list[dict[str, Any]] = []

    def samples():
        for index in range(start, stop):
            sample, row = gen.make(index)
            rows.append(row)
            yield sample

    write_shard(pool_dir, shard, samples())
    with atomic_path(Path(parts_dir) / f"{shard_name(shard)}.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=gt_schema()), tmp)
    return shard, len(rows), dict(Counter(r["defect"] for r in rows))


def generate(out_dir: str | os.PathLike, samples: int = 20000, seed: int = 0, workers: int | None = None,
             shard_size: int = 1000, zipf: float = 1.0, rates: dict[str, float] | None = None,
             multi_caption: float = 0.3, caption_noise: float = 0.25, evalsets: bool = True,
             eval_scale: float = 1.0, preview: bool = False, quiet: bool | None = None) -> dict[str, Any]:
    """Write the pool, `ground_truth.parquet`, eval sets (and `preview.png`); return the summary.

    `rates` overrides some defect rates (others keep `DEFAULT_RATES`). Rerunning with the same settings
    resumes an interrupted run; different content settings in a used folder raise `ConfigError`.
    """
    cfg = check_options(samples=samples, seed=seed, workers=workers, shard_size=shard_size, zipf=zipf,
                        rates=rates, multi_caption=multi_caption, caption_noise=caption_noise,
                        eval_scale=eval_scale)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    out = Path(out_dir)
    pool_dir, parts_dir = out / "pool", out / PARTS_DIR
    settings = {"pool": cfg.to_dict(), "evalsets": evalsets, "eval_scale": eval_scale}
    _check_out_dir(out)
    _check_settings(out / SYNTH_FILE, settings)
    # synth.json first: a folder holding anything of ours then also holds it, so a rerun resumes
    # instead of refusing the folder as someone else's.
    ensure_folder(out, "the output folder")
    write_json(out / SYNTH_FILE, {**settings, "status": "running"})
    ensure_folder(pool_dir, "the pool folder")
    ensure_folder(parts_dir, "the ground-truth parts folder")

    t0 = time.time()
    todo = [s for s in range(cfg.num_shards)
            if not (shard_done(pool_dir, s) and (parts_dir / f"{shard_name(s)}.parquet").exists())]
    if not (out / "ground_truth.parquet").exists() or todo:
        _run_shards(cfg, todo, workers, pool_dir, parts_dir, quiet)
        write_sizes(pool_dir)
        _merge_ground_truth(cfg, parts_dir, out / "ground_truth.parquet")
    counts = _defect_counts(out / "ground_truth.parquet")
    pool_seconds = time.time() - t0
    summary: dict[str, Any] = {**settings, "status": "done", "samples": cfg.samples,
                               "shards": cfg.num_shards, "defect_counts": counts,
                               "pool_seconds": round(pool_seconds, 2), "workers": workers}
    if evalsets:
        from clipstack.data.synthetic.evalsets import write_eval_sets

        t1 = time.time()
        summary["eval_sets"] = write_eval_sets(out / "eval", seed=seed, scale=eval_scale)
        summary["eval_seconds"] = round(time.time() - t1, 2)
    if preview:
        from clipstack.data.synthetic.preview import contact_sheet

        summary["preview"] = str(contact_sheet(out, out / "preview.png"))
    write_json(out / SYNTH_FILE, summary)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return summary


def check_options(samples: int = 20000, seed: int = 0, workers: int | None = None, shard_size: int = 1000,
                  zipf: float = 1.0, rates: dict[str, float] | None = None, multi_caption: float = 0.3,
                  caption_noise: float = 0.25, eval_scale: float = 1.0) -> PoolConfig:
    """The pool config for these options; `ConfigError` naming the first bad one. Writes nothing, so
    the quickstart (and `generate`) can check everything before any stage starts."""
    from clipstack.data.synthetic.defects import DEFAULT_RATES

    cfg = PoolConfig(samples=samples, seed=seed, shard_size=shard_size, zipf=zipf,
                     multi_caption=multi_caption, caption_noise=caption_noise,
                     rates={**DEFAULT_RATES, **(rates or {})})
    cfg.validate()
    if not 0 < eval_scale <= MAX_EVAL_SCALE:  # also refuses nan
        raise ConfigError(f"eval_scale: must be > 0 and <= {MAX_EVAL_SCALE:g} ({MAX_EVAL_SCALE:g}x the default "
                          f"eval sets), got {eval_scale}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    return cfg


def _check_out_dir(out: Path) -> None:
    """Refuse a file, or a non-empty folder that no synth run wrote: stray shards there would join the
    pool, and a rerun must never overwrite someone else's files."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file, not a folder; give synth a new or empty output folder")
    if out.is_dir() and not (out / SYNTH_FILE).exists() and any(out.iterdir()):
        raise DataError(f"{out}: folder is not empty and holds no {SYNTH_FILE}, so it is not a synth output; "
                        "choose an empty or new output folder")


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    if not path.exists():
        return
    advice = f"delete {path.parent} or use a new output folder"
    try:
        old = read_json(path, "synth settings file")
    except DataError as err:
        raise DataError(f"{err}; {advice}") from None
    if not isinstance(old, dict):
        raise DataError(f"{path}: synth settings file must hold a JSON object, got {type(old).__name__}; "
                        f"{advice}")
    for name in ("pool", "evalsets", "eval_scale"):
        if old.get(name) != json.loads(json.dumps(settings[name])):
            raise ConfigError(f"{path}: this folder was generated with other settings ({name} differs); "
                              f"use a new output folder or delete it")


def _run_shards(cfg: PoolConfig, todo: list[int], workers: int, pool_dir: Path, parts_dir: Path,
                quiet: bool | None) -> None:
    done_before = cfg.samples - sum(min(cfg.shard_size, cfg.samples - s * cfg.shard_size) for s in todo)
    bar = progress(total=cfg.samples, desc="synth pool", unit="sample", disable=quiet or None,
                   initial=done_before)
    args = (cfg.to_dict(),)
    try:
        if workers == 1 or len(todo) <= 1:
            for shard in todo:
                bar.update(_write_one_shard(*args, shard, str(pool_dir), str(parts_dir))[1])
            return
        # Bounded in-flight work: memory does not grow with the number of shards.
        # fork where there is one: no re-import per worker, and scripts need no __main__ guard.
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=get_context(method)) as pool:
            pending: set[Future] = set()
            queue = list(reversed(todo))
            while queue or pending:
                while queue and len(pending) < 2 * workers:
                    pending.add(pool.submit(_write_one_shard, *args, queue.pop(), str(pool_dir), str(parts_dir)))
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    bar.update(fut.result()[1])
    finally:
        bar.close()


def _merge_ground_truth(cfg: PoolConfig, parts_dir: Path, target: Path) -> None:
    """Concatenate the per-shard parts in shard order, one row group at a time (bounded memory)."""
    import pyarrow.parquet as pq

    with atomic_path(target) as tmp:
        with pq.ParquetWriter(tmp, gt_schema()) as writer:
            for shard in range(cfg.num_shards):
                writer.write_table(pq.read_table(parts_dir / f"{shard_name(shard)}.parquet"))


def _defect_counts(path: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    counts: Counter = Counter()
    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        counts.update(pf.read_row_group(i, columns=["defect"]).column(0).to_pylist())
    return dict(sorted(counts.items()))
