"""File I/O shared by every stage: atomic writes, and reads that fail with one clear message.

Writes go to a temp file beside the target, then rename: a crash or a kill mid-write leaves either the
old file or the new one, never half of one. A target that cannot be written (it is a folder, or a file
stands where its folder should be) is a `DataError` naming it. Reads of small text and JSON files raise
`DataError` naming the file and the reason (missing, not UTF-8, not JSON) instead of a bare traceback.
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


def ensure_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create folder `path` (and its parents) if needed; DataError naming it when it cannot be, e.g. because
    it, or a folder on the way to it, is an existing file."""
    folder = Path(path)
    reason = _make_folder(folder)
    if reason:
        raise DataError(f"{folder}: cannot create {what} ({reason})")
    return folder


def _make_folder(folder: Path) -> str | None:
    """mkdir -p `folder`; None when done, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exn:
        # mkdir says FileExistsError / NotADirectoryError without naming which part is in the way
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        return f"{blocker} is a file, not a folder" if blocker is not None else exn.strerror or str(exn)
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`."""
    target = Path(path)
    # Checked up front so a bad output path is one line naming it, before any work is written (the
    # rename would fail only at the end, with IsADirectoryError).
    if target.is_dir():
        raise DataError(f"{target}: is a folder, not a file name to write")
    reason = _make_folder(target.parent)
    if reason:
        raise DataError(f"{target}: cannot create its folder {target.parent} ({reason})")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exn:
        raise DataError(f"{target}: cannot write there ({exn.strerror or exn})") from None
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
