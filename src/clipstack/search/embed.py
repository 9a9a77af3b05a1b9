"""`clipstack embed`: batched image and caption embeddings for every sample in a set of shards.

Writes clip-retrieval's layout, one part per input shard (part i = the i-th shard in sorted order):
`img_emb/img_emb_{i}.npy`, `text_emb/text_emb_{i}.npy`, `metadata/metadata_{i}.parquet` (key, caption,
url, shard), plus `thumbs/thumbs_{i}.parquet` (small JPEGs for the web page) and `embed_info.json`.
Rows are L2-normalized, float32 or float16. A part's metadata is written last; a rerun redoes every part
whose files are not all there and loadable with the same row count (a killed run, a deleted or truncated
file), and keeps the others. Samples whose image does not decode are skipped and counted per reason:
for each part, `read == kept + dropped`.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipstack.errors import ConfigError, DataError
from clipstack.io import atomic_path, read_json, write_json
from clipstack.progress import progress
from clipstack.search import layout

THUMB_SIZE = 160


@dataclass
class EmbedStats:
    parts: int = 0
    parts_skipped: int = 0  # already done by an earlier run
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    shard_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"parts": self.parts, "parts_skipped": self.parts_skipped, "read": self.read,
                "kept": self.kept, "dropped": dict(self.dropped), "shard_errors": self.shard_errors}


def make_thumbnail(image, size: int = THUMB_SIZE) -> bytes:
    """A JPEG no larger than `size` on its longer side, for the results grid."""
    thumb = image.copy()
    thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=82)
    return buf.getvalue()


def embed(model: str, shards: Any, out_dir: str | os.PathLike, *, pretrained: str | None = None,
          batch_size: int = 64, dtype: str = "float32", thumbnails: bool = True, device: str = "cpu",
          encoder: Any = None) -> EmbedStats:
    """Embed every shard in `shards` (paths, brace patterns or a folder) into `out_dir`; resumable."""
    from clipstack.data.shards import expand_urls

    if dtype not in ("float32", "float16"):
        raise ConfigError(f"--dtype: {dtype!r} must be float32 or float16")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: {batch_size} must be >= 1")
    urls = expand_urls(shards)
    if not urls:
        raise DataError(f"{shards}: no shards found")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output folder is an existing file; give a new or existing folder")
    info_path = out / layout.EMBED_INFO_FILE
    info = _resume_info(info_path, model, pretrained, dtype, urls)
    stats = EmbedStats(parts=len(urls))
    # A part is done only when all its files load with one row count and its counts are recorded;
    # anything else (a kill mid-part, a deleted or truncated file) is redone from its shard.
    todo = [i for i in range(len(urls))
            if str(i) not in info["parts"] or layout.part_rows(out, i, thumbnails) != info["parts"][str(i)].get("kept")]
    stats.parts_skipped = len(urls) - len(todo)
    if todo and encoder is None:
        from clipstack.models.device import check_device
        from clipstack.search.encoder import Encoder

        check_device(device)
        encoder = Encoder(model, device=device, pretrained=pretrained)
    for part in todo:
        info["parts"].pop(str(part), None)
        layout.metadata_path(out, part).unlink(missing_ok=True)  # not done until rewritten, even if killed
        part_stats = embed_part(encoder, urls[part], out, part, batch_size=batch_size, dtype=dtype,
                                thumbnails=thumbnails)
        info["dim"] = encoder.dim
        info["parts"][str(part)] = part_stats
        write_json(info_path, info)
    for part_stats in info["parts"].values():
        stats.read += part_stats["read"]
        stats.kept += part_stats["kept"]
        stats.dropped.update(part_stats["dropped"])
        stats.shard_errors += part_stats.get("shard_errors", [])
    return stats


def _resume_info(path: Path, model: str, pretrained: str | None, dtype: str, urls: list[str]) -> dict:
    model_id = str(Path(model).resolve()) if Path(model).is_dir() else str(model)
    shards = [str(Path(u).resolve()) if "://" not in u else u for u in urls]  # same run from any cwd
    fresh = {"model": model_id, "pretrained": pretrained, "dtype": dtype, "shards": shards, "parts": {}}
    if not path.exists():
        return fresh
    old = read_json(path, "embedding info")
    if not isinstance(old, dict) or not isinstance(old.get("parts"), dict) \
            or not all(isinstance(v, dict) for v in old["parts"].values()):
        raise DataError(f"{path}: embedding info must be an object with a 'parts' object; delete the file "
                        "(every part is then embedded again) or use a new output folder")
    for key in ("model", "pretrained", "dtype", "shards"):
        if old.get(key) != fresh[key]:
            raise ConfigError(f"{path}: this folder was embedded with {key}={old.get(key)!r}, not "
                              f"{fresh[key]!r}; use a new output folder or the same settings to resume")
    return old


def embed_part(encoder: Any, url: str, out: Path, part: int, *, batch_size: int, dtype: str,
               thumbnails: bool) -> dict[str, Any]:
    """Embed one shard into part `part`; returns its counts (read, kept, dropped by reason)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipstack.data.shards import image_bytes_to_pil, read_samples

    dropped: Counter = Counter()
    read = 0
    rows: list[dict[str, Any]] = []
    thumbs: list[bytes] = []
    img_out, txt_out = [], []
    images, texts = [], []

    def flush():
        if images:
            img_out.append(encoder.encode_images(images))
            txt_out.append(encoder.encode_texts(texts))
            images.clear()
            texts.clear()

    shard_errors: list[str] = []

    def on_error(err: DataError):  # a broken tar ends its part early; a broken sample is dropped
        nonlocal read
        if "unreadable tar" in str(err) or "shard not found" in str(err):
            shard_errors.append(str(err))
        else:
            read += 1
            dropped["bad_sample"] += 1

    bar = progress(desc=f"embed {Path(url).name}", unit="img")
    for sample in read_samples([url], on_error=on_error):
        read += 1
        bar.update(1)
        try:
            image = image_bytes_to_pil(sample.image)
            tensor = encoder.preprocess(image)
        except Exception:  # noqa: BLE001 - PIL raises many types for corrupt images
            dropped["undecodable_image"] += 1
            continue
        images.append(tensor)
        texts.append(sample.caption)
        rows.append({"key": sample.key, "caption": sample.caption, "url": _str(sample.meta.get("url")),
                     "shard": Path(url).name})
        if thumbnails:
            thumbs.append(make_thumbnail(image))
        if len(images) >= batch_size:
            flush()
    flush()
    bar.close()
    dim = encoder.dim
    np_dtype = np.float16 if dtype == "float16" else np.float32
    for modality, chunks in (("image", img_out), ("text", txt_out)):
        arr = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        with atomic_path(layout.emb_path(out, modality, part)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr.astype(np_dtype))
    if thumbnails:
        with atomic_path(layout.thumbs_path(out, part)) as tmp:
            pq.write_table(pa.table({"thumbnail": pa.array(thumbs, pa.binary())}), tmp)
    schema = pa.schema([(name, pa.string()) for name in ("key", "caption", "url", "shard")])
    with atomic_path(layout.metadata_path(out, part)) as tmp:  # last: marks the part done
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    kept = len(rows)
    if read != kept + sum(dropped.values()):  # a bug, not bad data
        raise AssertionError(f"{url}: read {read} != kept {kept} + dropped {dict(dropped)}")
    return {"shard": url, "read": read, "kept": kept, "dropped": dict(dropped), "shard_errors": shard_errors}


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
