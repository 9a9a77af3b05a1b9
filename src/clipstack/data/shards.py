"""WebDataset shards in img2dataset's layout: write them atomically, read them back robustly.

A shard folder holds `{shard:05d}.tar` (`{key}.jpg|png|webp`, `{key}.txt`, `{key}.json`), and beside each
tar a parquet manifest `{shard:05d}.parquet` (one row per input sample, kept or not, as img2dataset
writes it) and `{shard:05d}_stats.json`; `sizes.json` maps tar names to sample counts (open_clip reads it).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipstack.errors import DataError
from clipstack.io import atomic_path, read_json, write_json

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TAR_MTIME = 0  # fixed so the same samples give byte-identical tars
FETCH_REASONS = ("missing_file", "http_error", "timeout", "unsupported_url")


@dataclass
class Sample:
    """One image-text pair as it is stored: encoded image bytes, captions, and JSON metadata."""

    key: str
    image: bytes
    captions: list[str]
    ext: str = "jpg"
    meta: dict[str, Any] = field(default_factory=dict)
    # The `.txt` member verbatim, when it must differ from the first caption (e.g. re-sharding a crawl
    # whose caption bytes are not UTF-8: kept as they are, so curation can count and drop them).
    txt: bytes | None = None

    @property
    def caption(self) -> str:
        return self.captions[0] if self.captions else ""


@dataclass
class Drop:
    """An input row that did not become a sample, and why (a reason code plus a readable detail)."""

    key: str
    reason: str
    detail: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShardStats:
    shard: str
    count: int
    successes: int
    failed: int
    duration: float
    status_dict: dict[str, int]


def shard_name(index: int) -> str:
    return f"{index:05d}"


def write_shard(out_dir: str | os.PathLike, index: int, samples: Iterable[Sample | Drop],
                drops: Iterable[Drop] = ()) -> ShardStats:
    """Write one shard (tar + parquet manifest + stats) atomically; `samples` may be a generator.

    Drops are listed in the manifest with their reason, as img2dataset lists failed downloads, and
    counted in the stats, so `count == successes + failed` holds per shard. A `Drop` may also come
    through `samples`, which keeps the manifest in input order; `drops` are listed after.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = shard_name(index)
    start = time.time()
    rows: list[dict[str, Any]] = []
    drop_list: list[Drop] = []

    def add_drop(drop: Drop) -> None:
        drop_list.append(drop)
        meta = {"key": drop.key, **{k: v for k, v in drop.meta.items() if k != "key"}}
        rows.append(_manifest_row(meta, drop.reason, drop.detail))

    with atomic_path(out / f"{name}.tar") as tmp:
        with open(tmp, "wb") as fh, wds.TarWriter(fh, encoder=False, mtime=TAR_MTIME) as tar:
            for sample in samples:
                if isinstance(sample, Drop):
                    add_drop(sample)
                    continue
                meta = sample_json(sample)
                tar.write({
                    "__key__": sample.key,
                    sample.ext: sample.image,
                    "txt": sample.txt if sample.txt is not None else sample.caption.encode("utf-8"),
                    "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                })
                rows.append(_manifest_row(meta, "success", ""))
    for drop in drops:
        add_drop(drop)
    status = Counter(row["status"] for row in rows)
    stats = ShardStats(shard=f"{name}.tar", count=len(rows), successes=status.get("success", 0),
                       failed=len(drop_list), duration=round(time.time() - start, 3),
                       status_dict=dict(sorted(status.items())))
    table = pa.Table.from_pylist(rows, schema=_manifest_schema())
    with atomic_path(out / f"{name}.parquet") as tmp:
        pq.write_table(table, tmp)
    fetch_failed = sum(1 for d in drop_list if d.reason in FETCH_REASONS)
    write_json(out / f"{name}_stats.json", {
        "count": stats.count, "successes": stats.successes, "failed": stats.failed,
        # img2dataset's split of the failures, for tools that read its stats files
        "failed_to_download": fetch_failed, "failed_to_resize": stats.failed - fetch_failed,
        "duration": stats.duration, "status_dict": stats.status_dict,
    })
    return stats


def sample_json(sample: Sample) -> dict[str, Any]:
    """The `.json` member: the user's metadata plus key, caption and every caption."""
    meta = dict(sample.meta)
    meta["key"] = sample.key
    meta["caption"] = sample.caption
    meta["captions"] = list(sample.captions)
    meta.setdefault("status", "success")
    return meta


def write_sizes(out_dir: str | os.PathLike) -> dict[str, int]:
    """Write `sizes.json` (tar name -> kept samples) from the shards' stats files; return it."""
    out = Path(out_dir)
    sizes = {}
    for stats_file in sorted(out.glob("*_stats.json")):
        stats = read_json(stats_file, "shard stats")
        tar_name = stats_file.name.removesuffix("_stats.json") + ".tar"
        if (out / tar_name).exists():
            sizes[tar_name] = int(stats.get("successes", 0))
    write_json(out / "sizes.json", sizes)
    return sizes


def shard_done(out_dir: str | os.PathLike, index: int) -> bool:
    """True when shard `index` was finished and is intact, so a rerun may skip it.

    Intact: the stats file reads as JSON, the manifest's footer says it holds `count` rows, and the
    tar reads to its end-of-archive block with `successes` samples. Writes are atomic, so damage means
    something outside clipstack cut or replaced a file (a full disk, a copy that stopped, an edit): the
    shard is then redone rather than trusted. Only tar headers are read (member data is skipped by
    seeking), so the check is cheap even for large shards.
    """
    out, name = Path(out_dir), shard_name(index)
    if not all((out / f"{name}{suffix}").exists() for suffix in (".tar", ".parquet", "_stats.json")):
        return False
    try:
        stats = json.loads((out / f"{name}_stats.json").read_text(encoding="utf-8"))
        count, successes = int(stats["count"]), int(stats["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return _manifest_rows(out / f"{name}.parquet") == count and tar_sample_count(out / f"{name}.tar") == successes


def _manifest_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):  # ArrowInvalid is a ValueError: not a parquet file
        return None


def tar_sample_count(path: str | os.PathLike) -> int | None:
    """Samples (keys with an image member) in a whole tar; None if it is truncated or unreadable."""
    from webdataset.tariterators import base_plus_ext

    keys: set[str] = set()
    try:
        with tarfile.open(path, mode="r:", tarinfo=_EndAwareTarInfo) as tar:
            for info in tar:
                prefix, suffix = base_plus_ext(info.name)
                if info.isreg() and prefix is not None and suffix in IMAGE_EXTS:
                    keys.add(prefix)
            whole = getattr(tar, "clipstack_end_block", False)
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return None
    return len(keys) if whole else None


_MANIFEST_FIELDS = [
    ("key", "string"), ("caption", "string"), ("url", "string"), ("status", "string"),
    ("error_message", "string"), ("width", "int64"), ("height", "int64"),
    ("original_width", "int64"), ("original_height", "int64"), ("sha256", "string"),
    ("json", "string"),
]


def _manifest_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in _MANIFEST_FIELDS])


def _manifest_row(meta: dict[str, Any], status: str, error: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, kind in _MANIFEST_FIELDS[:-1]:
        value = meta.get(name)
        if kind == "int64":
            value = int(value) if isinstance(value, int | float) else None
        elif value is not None:
            value = str(value)
        row[name] = value
    row["status"] = status
    row["error_message"] = error or None
    row["json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)
    return row


# ---------------------------------------------------------------------------------------------- reading


def expand_urls(urls: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Expand brace patterns (`shards/{00000..00009}.tar`), `::`-joined lists, folders and globs."""
    from braceexpand import braceexpand

    if isinstance(urls, str | os.PathLike):
        urls = [str(urls)]
    out: list[str] = []
    for url in urls:
        for part in str(url).split("::"):
            for expanded in braceexpand(part):
                path = Path(expanded)
                if path.is_dir():
                    out.extend(str(p) for p in sorted(path.glob("*.tar")))
                elif any(ch in expanded for ch in "*?["):
                    out.extend(str(p) for p in sorted(Path().glob(expanded)))
                else:
                    out.append(expanded)
    return out


class _EndAwareTarInfo(tarfile.TarInfo):
    """Marks its archive once the end-of-archive block (512 zero bytes) is read where a header would be.

    `tarfile` ends iteration silently on that block and equally on end of file at a header (no bytes, or
    a partial block), so a tar cut at or inside a member header would otherwise read as a shorter,
    complete one; the mark tells the two apart.
    """

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            tarfile_.clipstack_end_block = True
            raise


_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # skipped, as webdataset's tar_file_iterator skips them


def _tar_members(fh) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular member; raises `tarfile.ReadError` if the archive is truncated.

    An archive is whole once its first end-of-archive block has been read in full; what follows it (the
    second zero block, the padding to a 10 KiB record) may be missing. A cut anywhere before that,
    including exactly at a member boundary (byte for byte the same as an archive that lost its later
    members), is reported.
    """
    stream = tarfile.open(fileobj=fh, mode="r|*", tarinfo=_EndAwareTarInfo)
    for info in stream:
        if info.isreg() and not _META_MEMBER.match(info.name):
            yield info.name, stream.extractfile(info).read()
        stream.members = []  # stream mode keeps every TarInfo otherwise
    if not getattr(stream, "clipstack_end_block", False):
        raise tarfile.ReadError(f"truncated: no end-of-archive block at byte {stream.offset}")


def iter_shard(path: str | os.PathLike, on_error: Callable[[DataError], None] | None = None,
               ) -> Iterator[dict[str, Any]]:
    """Yield raw samples (`__key__`, `__url__`, then one bytes value per member extension).

    A missing, truncated or corrupt tar raises `DataError` (`unreadable tar after N samples`) naming the
    shard and the samples read so far, unless `on_error` is given, in which case it is called and the
    shard ends there. Truncated means cut anywhere before the end-of-archive block is read whole (see
    `_tar_members`): inside a header, inside or right after a member's data, at a member boundary. Members
    are grouped here rather than by webdataset's `group_by_keys`, which holds each sample until the next
    key shows up and so loses the last whole sample before the damage; here that sample is yielded (every
    member it has was read in full) and counted in N.

    A sample whose key (member name) is not UTF-8 is skipped: its key could not be written to any JSON,
    parquet or text output downstream. It is reported as a `SampleError` (reason `non_utf8_key`, the
    raw name in the message) through `on_error`, and the shard goes on; without `on_error` it is raised.
    """
    from webdataset.tariterators import base_plus_ext

    path = str(path)
    count = 0
    current: dict[str, Any] | None = None
    bad_key: str | None = None
    try:
        with open(path, "rb") as fh:
            for name, data in _tar_members(fh):
                prefix, suffix = base_plus_ext(name)
                if prefix is None or prefix == bad_key:
                    continue
                if not is_utf8(prefix):
                    if current is not None:
                        count += 1
                        yield current
                        current = None
                    bad_key = prefix
                    raw_name = prefix.encode("utf-8", "surrogateescape")
                    err = SampleError("non_utf8_key", f"{path}: sample key {raw_name!r} is not UTF-8; "
                                                      "sample skipped", key=prefix)
                    if on_error is None:
                        raise err
                    on_error(err)
                    continue
                if current is not None and current["__key__"] != prefix:
                    count += 1
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": prefix, "__url__": path}
                if suffix in current:  # a repeated member name: keep the first, as the tar order says
                    continue
                current[suffix] = data
    except FileNotFoundError:
        err = DataError(f"{path}: shard not found")
        if on_error is None:
            raise err from None
        on_error(err)
        return
    except (tarfile.TarError, OSError, EOFError, ValueError) as exn:
        if current is not None and any(ext in current for ext in IMAGE_EXTS):
            count += 1
            yield current
        err = DataError(f"{path}: unreadable tar after {count} samples ({type(exn).__name__}: {exn})")
        if on_error is None:
            raise err from None
        on_error(err)
        return
    if current is not None:
        yield current


def is_utf8(text: str) -> bool:
    """False when `text` carries undecodable bytes (tarfile and os decode them as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode_sample(raw: dict[str, Any]) -> Sample:
    """Turn a raw tar sample into a `Sample`; raises `DataError` naming the key if it has no image."""
    key = raw["__key__"]
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise DataError(f"{raw.get('__url__', '?')}: sample {key} has no image member")
    meta: dict[str, Any] = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exn:
            raise DataError(f"{raw.get('__url__', '?')}: sample {key} has unreadable json ({exn})") from None
    captions = meta.get("captions") or []
    if not captions and "txt" in raw:
        try:
            captions = [raw["txt"].decode("utf-8")]
        except UnicodeDecodeError:
            raise DataError(f"{raw.get('__url__', '?')}: sample {key} caption is not UTF-8") from None
    meta.setdefault("__url__", raw.get("__url__"))
    return Sample(key=key, image=raw[ext], captions=list(captions), ext=ext, meta=meta)


def read_samples(urls: str | os.PathLike | Iterable[str | os.PathLike],
                 on_error: Callable[[DataError], None] | None = None) -> Iterator[Sample]:
    """Yield every `Sample` from the shards in order (no shuffling; see `clipstack.data.loader`)."""
    for url in expand_urls(urls):
        for raw in iter_shard(url, on_error=on_error):
            try:
                yield decode_sample(raw)
            except DataError as err:
                if on_error is None:
                    raise
                on_error(err)


# ----------------------------------------------------------------------------------------- image bytes

# PIL's own default warning threshold (about 89.5 megapixels); a declared size above it is a bomb.
DEFAULT_MAX_PIXELS = 89_478_485


class SampleError(DataError):
    """One sample cannot be used; `reason` is the ledger code (`undecodable_image`, ...)."""

    def __init__(self, reason: str, detail: str, key: str | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.key = key  # the sample's key as read, when the error comes from a shard reader


def open_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, load: bool = True):
    """Open encoded image bytes with PIL, refusing decompression bombs before any pixel is decoded.

    The size check reads only the header, so a tiny file declaring 100 megapixels costs nothing. Raises
    `SampleError` with reason `undecodable_image` (empty, corrupt or truncated data) or
    `decompression_bomb` (more than `max_pixels` pixels). With `load=False` the image is returned lazily
    opened (a JPEG can then still be drafted to a reduced size before decoding).
    """
    import warnings

    from PIL import Image

    if not data:
        raise SampleError("undecodable_image", "empty image data (0 bytes)")
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # PIL would refuse above twice its own limit whatever we ask: ours is the one that counts,
            # checked below from the header alone.
            Image.MAX_IMAGE_PIXELS = None
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exn:
        raise SampleError("decompression_bomb", str(exn)) from None
    except Exception as exn:  # noqa: BLE001 -- PIL plugins raise many types on bad bytes
        raise SampleError("undecodable_image", f"cannot identify image ({type(exn).__name__}: {exn})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise SampleError("decompression_bomb",
                          f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
    if width <= 0 or height <= 0:
        raise SampleError("undecodable_image", f"image declares size {width}x{height}")
    if load:
        load_image(img)
    return img


def load_image(img):
    """Decode a lazily opened image fully; truncated or corrupt data raises `SampleError`."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as exn:
        raise SampleError("decompression_bomb", str(exn)) from None
    except Exception as exn:  # noqa: BLE001 -- PIL plugins raise many types on bad bytes
        raise SampleError("undecodable_image", f"image data is corrupt or truncated ({exn})") from None
    return img


def image_bytes_to_pil(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Decode image bytes with PIL (fully loaded, RGB); `SampleError` names why it cannot be used."""
    return open_image(data, max_pixels=max_pixels).convert("RGB")
