"""File I/O shared by every stage: atomic writes, and reads that fail with one clear message.

Writes go to a temp file beside the target, then rename: a crash or a kill mid-write leaves either the
old file or the new one, never half of one. Reads of small text and JSON files raise `DataError` naming
the file and the reason (missing, not UTF-8, not JSON) instead of a bare traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from clipstack.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; a finished file reads like any other
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file for writing that replaces `path` only when the block finishes."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, sort_keys=False, default=_json_default)
        fh.write("\n")


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (nan, inf) replaced by None, so it serializes as strict JSON:
    `json.dump` would write bare NaN/Infinity, which strict parsers (browsers, jq) reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file's content; DataError naming `path` if it is missing, unreadable or not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exn:
        raise DataError(f"{path}: {what} is not UTF-8 text (byte {exn.start}: {exn.reason})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: {what} is a folder, not a file") from None
    except OSError as exn:
        raise DataError(f"{path}: cannot read {what} ({exn.strerror or exn})") from None


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """A JSON file's content; DataError naming `path` and the line if it cannot be read or parsed."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exn:
        raise DataError(f"{path}: {what} is not valid JSON (line {exn.lineno}, column {exn.colno}: "
                        f"{exn.msg})") from None
