"""`clipstack ingest SRC OUT_DIR`: a user's image-text pairs -> WebDataset shards, every row accounted for.

Steps, each in its own module: `sources` (rows in a fixed order) -> keys, duplicate check and shard
assignment here -> per shard, in a worker process: caption check, `download` (bounded threads),
`resize` (check, resize, encode) -> `shards.write_shard` (atomic). A shard whose tar, manifest and stats
exist and agree (`shards.shard_done`) is skipped on a rerun, so an interrupted ingest resumes where it
stopped; a damaged one is redone. A rerun must use the same options that shape the output (source,
columns, shard size, image options; `_ingest_config.json` records them) or it is refused, naming the
option; work options (processes, threads, timeout, retries) may change. At the end the per-shard
manifests are merged into `_ledger.parquet` (one row per input row: kept or the drop reason) and the
totals into `_stats.json`, and `in == kept + dropped` is checked before the summary is printed. Input
that has no rows to count (a missing, truncated or corrupt input shard) is listed in `_stats.json`
(`source_errors`) and in the summary; if no input could be read at all, ingest fails after writing it.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipstack.data.download import Fetcher, map_bounded
from clipstack.data.resize import Resizer
from clipstack.data.shards import Drop, Sample, SampleError, shard_done, shard_name, write_shard, write_sizes
from clipstack.data.sources import Row, count_hint, open_source
from clipstack.errors import ConfigError, DataError
from clipstack.io import read_json, write_json

DROP_REASONS = ("missing_file", "http_error", "timeout", "unsupported_url", "undecodable_image",
                "decompression_bomb", "too_small", "empty_caption", "non_utf8_caption", "non_utf8_key",
                "malformed_row", "duplicate_key")
# Options that shape the output: a resume with other values would mix two jobs' shards.
JOB_OPTIONS = ("source", "shard_size", "source_kind", "url_col", "caption_cols", "key_col")


@dataclass
class IngestConfig:
    source_kind: str = "auto"
    url_col: str | None = None
    caption_cols: list[str] | None = None
    key_col: str | None = None
    shard_size: int = 10_000
    processes: int = 1
    threads: int = 16
    timeout: float = 10.0
    retries: int = 2
    resizer: Resizer = field(default_factory=Resizer)

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ConfigError(f"shard_size={self.shard_size}: must be >= 1")
        if self.processes < 1 or self.threads < 1:
            raise ConfigError(f"processes={self.processes}, threads={self.threads}: both must be >= 1")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"timeout={self.timeout}: must be a number of seconds > 0")
        if self.retries < 0:
            raise ConfigError(f"retries={self.retries}: must be >= 0")


@dataclass
class IngestResult:
    out_dir: Path
    total: int
    kept: int
    dropped: dict[str, int]
    shards: int
    skipped_shards: int
    duration: float
    source_errors: list[str] = field(default_factory=list)  # unreadable input, with no rows to count

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0])))
        resumed = f" ({self.skipped_shards} already done)" if self.skipped_shards else ""
        unreadable = f" | {len(self.source_errors)} input unreadable" if self.source_errors else ""
        return (f"ingest: in {self.total} | kept {self.kept} | dropped {self.dropped_total}"
                f"{': ' + reasons if reasons else ''}{unreadable} | {self.shards} shards{resumed} in {self.out_dir}"
                + "".join(f"\n  unreadable input: {err}" for err in self.source_errors))


def ingest(src: str | os.PathLike, out_dir: str | os.PathLike, config: IngestConfig | None = None,
           show_progress: bool | None = None) -> IngestResult:
    """Ingest `src` into shards under `out_dir`; see the module docstring."""
    from clipstack.progress import progress

    cfg = config or IngestConfig()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: OUT_DIR exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exn:
        raise DataError(f"{out}: cannot create OUT_DIR ({exn.strerror or exn})") from None
    start = time.time()
    _check_same_job(out, str(src), cfg)
    source_errors: list[str] = []
    rows = open_source(str(src), cfg.source_kind, cfg.url_col, cfg.caption_cols, cfg.key_col,
                       on_source_error=source_errors.append)
    bar = progress(total=count_hint(str(src), cfg.source_kind), desc="ingest", unit="img",
                   disable=None if show_progress is None else not show_progress)
    shards = skipped = 0
    with bar, _Executor(cfg.processes) as pool:
        for index, batch in enumerate(_shard_batches(rows, cfg.shard_size)):
            shards += 1
            if shard_done(out, index):
                skipped += 1
                bar.update(len(batch))
                continue
            pool.submit(_process_shard, str(out), index, batch, cfg, callback=bar.update)
        pool.drain(callback=bar.update)
    return finalize(out, shards, skipped, time.time() - start, source_errors)


def _check_same_job(out: Path, src: str, cfg: IngestConfig) -> None:
    """Resuming is only sound with the same output-shaping options; refuse to mix two jobs' shards."""
    path = out / "_ingest_config.json"
    current = {"source": src if "://" in src else os.path.abspath(src), **_config_json(cfg)}
    if path.exists() and any(out.glob("*_stats.json")):  # a failed start (bad column...) binds nothing
        try:  # damaged: the shards there cannot be tied to any options, so none is trusted
            previous = read_json(path, "ingest config of the previous run")
        except DataError as err:
            raise DataError(f"{err}; use a new OUT_DIR") from None
        if not isinstance(previous, dict):
            raise DataError(f"{path}: ingest config of the previous run is not a JSON object; "
                            "use a new OUT_DIR")
        pairs = [(name, previous.get(name), current.get(name)) for name in JOB_OPTIONS]
        old_img, new_img = previous.get("resizer"), current["resizer"]
        if isinstance(old_img, dict):  # image options: every one changes the stored bytes
            pairs += [(name, old_img.get(name), value) for name, value in new_img.items()]
        for name, before, now in pairs:
            if before != now:
                raise ConfigError(f"{out}: holds shards of another ingest ({name}={before!r}, now {now!r}); "
                                  "use a new OUT_DIR or the same options")
    write_json(path, current)


def _shard_batches(rows: Iterator[Row], shard_size: int) -> Iterator[list[tuple[Row, str, bool]]]:
    """Group rows into shards, give each its final key, and flag the second use of a key."""
    digits = max(4, len(str(shard_size - 1)))
    seen: set[str] = set()
    batch: list[tuple[Row, str, bool]] = []
    index = 0
    for row in rows:
        key = row.key or f"{index:05d}{len(batch):0{digits}d}"
        if row.drop:  # dropped anyway: its key (often a lossy stand-in) must not shadow a later row's
            batch.append((row, key, False))
        else:
            batch.append((row, key, key in seen))
            seen.add(key)
        if len(batch) == shard_size:
            yield batch
            batch, index = [], index + 1
    if batch:
        yield batch


def _process_shard(out_dir: str, index: int, batch: list[tuple[Row, str, bool]], cfg: IngestConfig) -> int:
    """Check, fetch, resize and write one shard; returns the number of input rows it accounted for."""
    fetch = Fetcher(timeout=cfg.timeout, retries=cfg.retries)
    checked: list[tuple[Row, str, list[str] | Drop]] = []
    for row, key, duplicate in batch:
        meta = {**row.meta, "key": key}
        if row.drop:
            checked.append((row, key, Drop(key, *row.drop, meta)))
            continue
        if duplicate:
            checked.append((row, key, Drop(key, "duplicate_key", f"key {key} already used by an earlier row", meta)))
            continue
        captions, reason, detail = check_captions(row)
        checked.append((row, key, Drop(key, reason, detail, meta) if reason else captions))

    def load(item: tuple[Row, str, list[str] | Drop]) -> bytes | None:
        row, _, verdict = item
        if isinstance(verdict, Drop):
            return None  # dropped already: nothing to fetch
        return row.data if row.data is not None else fetch(row.location)

    def samples() -> Iterator[Sample | Drop]:
        """Samples and drops in input order (fetches run ahead on `cfg.threads` threads)."""
        for (row, key, verdict), data in zip(checked, map_bounded(load, checked, cfg.threads)):
            if isinstance(verdict, Drop):
                yield verdict
                continue
            meta = {**row.meta, "key": key}
            try:
                if isinstance(data, Exception):
                    raise data
                img = cfg.resizer(data)
            except SampleError as err:
                yield Drop(key, err.reason, err.detail, meta)
                continue
            except Exception as exn:  # noqa: BLE001 -- one odd file must not end a long run; count it
                yield Drop(key, "undecodable_image", f"{type(exn).__name__}: {exn}", meta)
                continue
            meta.update(width=img.width, height=img.height, original_width=img.original_width,
                        original_height=img.original_height, sha256=img.sha256)
            yield Sample(key, img.data, verdict, ext=img.ext, meta=meta)

    return write_shard(out_dir, index, samples()).count


def check_captions(row: Row) -> tuple[list[str], str, str]:
    """(clean captions, drop reason, detail): non-UTF-8 bytes or no non-blank caption drop the row."""
    clean = []
    for caption in row.captions:
        try:
            caption.encode("utf-8")
        except UnicodeEncodeError:
            raw = caption.encode("utf-8", "surrogateescape")
            return [], "non_utf8_caption", f"caption bytes are not UTF-8: {raw[:40]!r}"
        caption = caption.strip()
        if caption and caption not in clean:  # the same text twice adds nothing to sample from
            clean.append(caption)
    if not clean:
        return [], "empty_caption", row.caption_note or "caption is empty"
    return clean, "", ""


def finalize(out_dir: str | os.PathLike, shards: int, skipped: int = 0, duration: float = 0.0,
             source_errors: list[str] | None = None) -> IngestResult:
    """Merge shard manifests into `_ledger.parquet`, totals into `_stats.json`, write `sizes.json`.

    `source_errors` (unreadable input) go into `_stats.json`; if there are some and no row at all was
    read, `DataError` is raised after writing it, so a wrong or broken input does not pass for empty.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipstack.io import atomic_path

    out = Path(out_dir)
    tables = []
    for index in range(shards):
        name = shard_name(index)
        try:
            table = pq.read_table(out / f"{name}.parquet", columns=["key", "url", "status", "error_message"])
        except (OSError, ValueError, KeyError) as exn:  # ArrowInvalid is a ValueError
            raise DataError(f"{out / name}.parquet: unreadable shard manifest ({type(exn).__name__}: {exn}); "
                            "rerun the ingest to redo the shard") from None
        tables.append(table.append_column("shard", pa.array([f"{name}.tar"] * table.num_rows, pa.string())))
    ledger = pa.concat_tables(tables) if tables else pa.table(
        {c: pa.array([], pa.string()) for c in ("key", "url", "status", "error_message", "shard")})
    with atomic_path(out / "_ledger.parquet") as tmp:
        pq.write_table(ledger, tmp)
    status = Counter(ledger.column("status").to_pylist())
    kept = status.pop("success", 0)
    total = ledger.num_rows
    if total != kept + sum(status.values()):  # cannot happen unless a manifest is damaged: say so loudly
        raise DataError(f"{out}: ledger does not add up (in {total} != kept {kept} + dropped)")
    write_sizes(out)
    errors = list(source_errors or [])
    result = IngestResult(out, total, kept, dict(sorted(status.items())), shards, skipped, round(duration, 3),
                          errors)
    write_json(out / "_stats.json", {
        "in": total, "kept": kept, "dropped": result.dropped_total, "dropped_by_reason": result.dropped,
        "shards": shards, "skipped_shards": skipped, "duration": result.duration, "source_errors": errors,
    })
    if errors and total == 0:
        more = f" (and {len(errors) - 1} more; see {out / '_stats.json'})" if len(errors) > 1 else ""
        raise DataError(f"no input could be read: {errors[0]}{more}")
    return result


def _config_json(cfg: IngestConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


class _Executor:
    """Runs shard jobs inline (processes=1) or in a process pool with a bounded number in flight."""

    def __init__(self, processes: int):
        self.processes = processes
        self.pool: ProcessPoolExecutor | None = None
        self.futures: set[Future] = set()

    def __enter__(self) -> _Executor:
        if self.processes > 1:
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            self.pool = ProcessPoolExecutor(self.processes, mp_context=ctx)
        return self

    def submit(self, fn: Any, *args: Any, callback: Any) -> None:
        if self.pool is None:
            callback(fn(*args))
            return
        while len(self.futures) >= 2 * self.processes:  # bound memory: shards carry their rows
            self._wait_one(callback)
        self.futures.add(self.pool.submit(fn, *args))

    def _wait_one(self, callback: Any) -> None:
        done, self.futures = wait(self.futures, return_when=FIRST_COMPLETED)
        for fut in done:
            callback(fut.result())

    def drain(self, callback: Any) -> None:
        while self.futures:
            self._wait_one(callback)

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
