"""Ingest's input step: turn a source (image folder, table, WebDataset shards) into rows, in a fixed order.

A row is one input sample before any check: where its image is (a path or URL, or bytes already read
from a tar), its captions as text, extra metadata, and a key when the source names one. Captions are
read with `surrogateescape`, so bytes that are not UTF-8 survive to the worker, which drops the row as
`non_utf8_caption` instead of the whole file failing to parse. Likewise a row the source already knows
is unusable (a malformed JSONL line or CSV row, a file name that is not UTF-8, a caption file without
its image) is still yielded, with `drop` set, so that it is counted and listed in the ledger rather than
lost or fatal. The order is deterministic so that a rerun assigns the same rows to the same shards
(resume skips finished shards).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipstack.data.shards import is_utf8
from clipstack.errors import DataError

FOLDER_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TABLE_EXTS = (".csv", ".tsv", ".parquet", ".jsonl", ".json")
URL_COLUMNS = ("url", "path", "image", "image_path", "file", "filename", "filepath")
CAPTION_COLUMNS = ("caption", "text", "captions", "alt", "title")
SOURCE_KINDS = ("auto", "folder", "table", "wds")


@dataclass
class Row:
    location: str  # a path or URL ("" when `data` holds the bytes)
    captions: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    data: bytes | None = None
    caption_note: str = ""  # why there is no caption, when the source knows (e.g. no sidecar file)
    drop: tuple[str, str] | None = None  # (reason, detail) when the source already knows it is unusable


@dataclass
class _BadRecord:
    """A table record that could not be parsed; `where` is `file:line` and `detail` says why."""

    where: str
    detail: str


def detect_kind(src: str) -> str:
    path = Path(src)
    if "{" in src or src.endswith(".tar") or "::" in src:
        return "wds"
    if path.is_dir():
        return "wds" if any(path.glob("*.tar")) else "folder"
    if path.suffix.lower() in TABLE_EXTS:
        return "table"
    if not path.exists():
        raise DataError(f"{src}: source not found")
    raise DataError(f"{src}: cannot tell the source kind (a folder, a {'/'.join(TABLE_EXTS)} table or "
                    f".tar shards); pass --source-kind")


def open_source(src: str, kind: str = "auto", url_col: str | None = None,
                caption_cols: list[str] | None = None, key_col: str | None = None,
                on_source_error: Callable[[str], None] | None = None) -> Iterator[Row]:
    """Rows of `src` in a deterministic order.

    `on_source_error` is told (one message each) about input that could not be read at all, so has no
    rows to count: a missing, truncated or corrupt input shard.
    """
    kind = detect_kind(str(src)) if kind == "auto" else kind
    if kind == "folder":
        return folder_rows(Path(src))
    if kind == "table":
        return table_rows(Path(src), url_col, caption_cols, key_col)
    if kind == "wds":
        return wds_rows(str(src), on_source_error)
    raise DataError(f"source kind {kind!r}: expected one of {', '.join(SOURCE_KINDS)}")


def count_hint(src: str, kind: str = "auto") -> int | None:
    """How many rows `src` holds, when cheap to know (for the progress bar's ETA); None otherwise."""
    path = Path(src)
    try:
        kind = detect_kind(src) if kind == "auto" else kind
        if kind == "folder":
            if (path / "captions.csv").exists():
                return count_hint(str(path / "captions.csv"), "table")
            return sum(1 for p in path.rglob("*") if p.suffix.lower() in FOLDER_IMAGE_EXTS)
        if kind == "table" and path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if kind == "table":  # lines, less a CSV header (a quoted caption with newlines overcounts)
            with open(path, "rb") as fh:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
            return max(0, lines - (path.suffix.lower() in (".csv", ".tsv")))
        if kind == "wds" and path.is_dir() and (path / "sizes.json").exists():
            return sum(json.loads((path / "sizes.json").read_text(encoding="utf-8")).values())
    except (OSError, ValueError, DataError):
        return None
    return None


def folder_rows(root: Path) -> Iterator[Row]:
    """Images under `root` (recursively, sorted) with sidecar captions, or listed in `captions.csv`.

    A sidecar `<name>.txt` holds the caption; an optional `<name>.json` adds more captions (its
    `captions` list, e.g. rewrites) and metadata (its other fields).

    Nothing in the folder goes uncounted: a broken symlink is a row (dropped as `missing_file` when
    fetched), so is a `<name>.txt` with no image beside it (`missing_file`), a file name that is not
    UTF-8 (`non_utf8_key`: it could not be written to the shard's JSON) and an image whose `.json`
    sidecar does not parse (`malformed_row`).
    """
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "captions.csv").exists():
        yield from table_rows(root / "captions.csv", None, None, None)
        return
    images, orphans = [], []
    for p in root.rglob("*"):
        if p.suffix.lower() in FOLDER_IMAGE_EXTS and (p.is_file() or p.is_symlink()):
            images.append(p)
        elif p.suffix == ".txt" and p.is_file():
            orphans.append(p)
    stems = {p.with_suffix("") for p in images}
    orphans = [p for p in orphans if p.with_suffix("") not in stems]
    orphan_set = set(orphans)
    for path in sorted(images + orphans):
        key = _safe_key(str(path.relative_to(root).with_suffix("")))
        meta: dict[str, Any] = {"url": _jsonable(str(path))}
        if not is_utf8(str(path.relative_to(root))):
            yield Row("", [], meta, key, drop=("non_utf8_key", f"file name {os.fsencode(path)!r} is not UTF-8"))
            continue
        if path in orphan_set:
            yield Row("", [], meta, key, drop=("missing_file", f"{path}: caption file with no image beside it "
                                                               f"(looked for {path.stem}.jpg, .png, ...)"))
            continue
        captions: list[str] = []
        sidecar, extra = path.with_suffix(".txt"), path.with_suffix(".json")
        try:
            if sidecar.exists():
                captions.append(sidecar.read_bytes().decode("utf-8", "surrogateescape"))
            info = json.loads(extra.read_bytes().decode("utf-8", "surrogateescape")) if extra.exists() else None
        except json.JSONDecodeError as exn:
            yield Row(str(path), [], meta, key, drop=("malformed_row", f"{extra}: not valid JSON ({exn.msg})"))
            continue
        except OSError as exn:
            yield Row(str(path), [], meta, key, drop=("missing_file", f"{exn.filename}: cannot read "
                                                                      f"({exn.strerror or exn})"))
            continue
        if isinstance(info, dict):
            captions.extend(_caption_values(info.pop("captions", None)))  # repeats dropped later
            meta.update({_jsonable(k): _jsonable(v) for k, v in info.items() if k not in ("url", "key")})
        note = "" if captions else f"no caption file {sidecar.name}"
        yield Row(str(path), captions, meta, key, caption_note=note)


def table_rows(path: Path, url_col: str | None, caption_cols: list[str] | None,
               key_col: str | None) -> Iterator[Row]:
    """Rows of a CSV/TSV/parquet/JSONL table: image path-or-URL column, caption column(s), extras in meta."""
    if not path.exists():
        raise DataError(f"{path}: table not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        records: Iterator[dict[str, Any] | _BadRecord] = _parquet_records(path)
    elif suffix in (".jsonl", ".json"):
        records = _jsonl_records(path)
    else:
        records = _csv_records(path, "\t" if suffix == ".tsv" else ",")
    base = path.parent
    first = True
    for record in records:
        if isinstance(record, _BadRecord):  # counted and listed in the ledger; the rest still goes in
            yield Row("", [], {"url": _jsonable(record.where)}, drop=("malformed_row", record.detail))
            continue
        if first:
            url_col, caption_cols = _resolve_columns(path, list(record), url_col, caption_cols, key_col)
            first = False
        location = _text(record.get(url_col)).strip()
        if location and "://" not in location and not os.path.isabs(location):
            location = str(base / location)
        captions: list[str] = []
        for col in caption_cols:
            captions.extend(_caption_values(record.get(col)))
        meta = {_jsonable(k): _jsonable(v) for k, v in record.items() if k not in caption_cols and k != url_col}
        meta["url"] = _jsonable(location)
        key = _safe_key(_text(record.get(key_col))) if key_col and record.get(key_col) not in (None, "") else None
        yield Row(location, captions, meta, key)


def wds_rows(urls: str, on_source_error: Callable[[str], None] | None = None) -> Iterator[Row]:
    """Samples of existing WebDataset shards, image bytes in hand (for re-sharding / re-encoding).

    A missing, truncated or corrupt tar ends its shard with a warning (the samples before the damage
    are kept) and is reported to `on_source_error`; it cannot be counted per sample, since what it held
    past the damage is unknown. A sample whose key is not UTF-8 is a row dropped as `non_utf8_key`.
    """
    import sys

    from clipstack.data.shards import IMAGE_EXTS, SampleError, expand_urls, iter_shard

    skipped: list[Row] = []

    def on_error(err: DataError) -> None:
        if isinstance(err, SampleError):  # one sample: a row to count, in its place in the shard
            raw_key = err.key or ""
            skipped.append(Row("", [], {"url": _jsonable(f"{url}#{raw_key}")}, _safe_key(raw_key),
                               drop=(err.reason, err.detail)))
            return
        print(f"clipstack: warning: {err}", file=sys.stderr)
        if on_source_error is not None:
            on_source_error(str(err))

    for url in expand_urls(urls):
        for raw in iter_shard(url, on_error=on_error):
            yield from skipped
            skipped.clear()
            key = raw["__key__"]
            ext = next((e for e in IMAGE_EXTS if e in raw), None)
            meta: dict[str, Any] = {}
            if "json" in raw:
                try:
                    meta = json.loads(raw["json"].decode("utf-8", "replace"))
                except json.JSONDecodeError:
                    meta = {}
            captions = meta.pop("captions", None) or []
            if not captions and "txt" in raw:
                captions = [raw["txt"].decode("utf-8", "surrogateescape")]
            for name in ("caption", "key", "status", "error_message", "width", "height", "sha256"):
                meta.pop(name, None)
            meta.setdefault("url", f"{url}#{key}")
            meta["source_key"] = key
            yield Row("", [str(c) for c in captions], meta, _safe_key(key),
                      data=raw[ext] if ext else None,
                      caption_note="" if captions or "txt" in raw else "no .txt or captions in the sample")
        yield from skipped
        skipped.clear()


# ------------------------------------------------------------------------------------------------ helpers


def _csv_records(path: Path, delimiter: str) -> Iterator[dict[str, Any] | _BadRecord]:
    """Records of a CSV/TSV file; a row with more fields than the header is a `_BadRecord`."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            if not reader.fieldnames:
                raise DataError(f"{path}: no header row")
            for record in reader:
                if None in record:  # DictReader files the surplus under None: which column is meant is unknown
                    where = f"{path}:{reader.line_num}"
                    yield _BadRecord(where, f"{where}: {len(reader.fieldnames) + len(record[None])} fields, "
                                            f"the header has {len(reader.fieldnames)}")
                    continue
                yield record
        except csv.Error as exn:  # e.g. a NUL byte or an unclosed quote at the end: the rest is unreadable
            raise DataError(f"{path}:{reader.line_num}: not readable as CSV ({exn})") from None


def _jsonl_records(path: Path) -> Iterator[dict[str, Any] | _BadRecord]:
    """Records of a JSON Lines file; a line that is not a JSON object is a `_BadRecord`."""
    first = True
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError as exn:
                record, detail = None, f"{where}: not valid JSON ({exn.msg})"
            else:
                detail = f"{where}: expected a JSON object per line, got {type(record).__name__}"
            if not isinstance(record, dict):
                if first and line.lstrip().startswith(b"["):  # the whole file is a JSON array: say so once
                    raise DataError(f"{path}: a JSON array, not JSON Lines; write one JSON object per line")
                yield _BadRecord(where, detail)
            else:
                yield record
            first = False


def _parquet_records(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    done = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            rows = batch.to_pylist()
            done += len(rows)
            yield from rows
    except (OSError, ValueError) as exn:  # ArrowInvalid is a ValueError; both mean a damaged file
        at = f" after {done} rows" if done else ""
        raise DataError(f"{path}: not a readable parquet file{at} ({type(exn).__name__}: {exn})") from None


def _resolve_columns(path: Path, columns: list[str], url_col: str | None, caption_cols: list[str] | None,
                     key_col: str | None) -> tuple[str, list[str]]:
    def pick(wanted: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
        if wanted:
            if wanted not in columns:
                raise DataError(f"{path}: no column {wanted!r} for the {what} (columns: {', '.join(columns)})")
            return wanted
        for name in candidates:
            if name in columns:
                return name
        raise DataError(f"{path}: no {what} column among {', '.join(columns)}; name it with {flag}")

    url = pick(url_col, URL_COLUMNS, "image path or URL", "--url-col")
    if caption_cols:
        caps = [pick(c, (), "caption", "--caption-col") for c in caption_cols]
    else:
        caps = [pick(None, CAPTION_COLUMNS, "caption", "--caption-col")]
    if key_col:
        pick(key_col, (), "key", "--key-col")
    return url, caps


def _caption_values(value: Any) -> list[str]:
    """One caption, or several from a list value or a JSON array string (multi-caption sources)."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [_text(v) for v in value if v is not None]
    text = _text(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return [text]
        if isinstance(parsed, list):
            return [_text(v) for v in parsed if v is not None]
    return [text]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if value is None or isinstance(value, int | float | bool | list | dict):
        return value
    return str(value)


def _safe_key(key: str) -> str:
    """WebDataset splits member names at the first dot and folders at '/': keep keys to [A-Za-z0-9_-]."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in key)
