"""A contact sheet of pool samples (thumbnail, caption, and the hidden defect label) as one PNG."""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clipstack.io import atomic_path

THUMB, TEXT_H, COLS = 168, 74, 6


def contact_sheet(synth_dir: str | os.PathLike, out_path: str | os.PathLike, count: int = 24,
                  defect_examples: int = 9) -> Path:
    """Draw the first pool samples, then one example of each of up to `defect_examples` defect types.

    Each tile shows the image as stored (aspect kept), the `.txt` caption (wrapped, non-UTF-8 bytes
    shown escaped), the image size, and the ground-truth defect in red when there is one.
    """
    import pyarrow.parquet as pq

    from clipstack.data.shards import expand_urls, iter_shard

    synth = Path(synth_dir)
    gt_path = synth / "ground_truth.parquet"
    defects = {}
    if gt_path.exists():
        table = pq.read_table(gt_path, columns=["key", "defect"])
        defects = dict(zip(table.column("key").to_pylist(), table.column("defect").to_pylist()))
    head: list[dict] = []
    examples: dict[str, dict] = {}
    for n, raw in enumerate(_raw_samples(expand_urls(synth / "pool"), iter_shard)):
        defect = defects.get(raw["__key__"], "clean")
        if len(head) < count:
            head.append(raw)
        if defect != "clean" and len(examples) < defect_examples:
            examples.setdefault(defect, raw)
        if (len(head) >= count and len(examples) >= defect_examples) or n > 5000:
            break
    # The first samples as they come, then one example of each defect type they do not show yet.
    seen = {defects.get(r["__key__"], "clean") for r in head}
    missing = [r for d, r in examples.items() if d not in seen]
    keep = head[: max(0, count - len(missing))]
    seen = {defects.get(r["__key__"], "clean") for r in keep}
    raws = keep + [r for d, r in examples.items() if d not in seen]
    rows = max(1, -(-len(raws) // COLS))
    sheet = Image.new("RGB", (COLS * THUMB, rows * (THUMB + TEXT_H)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for n, raw in enumerate(raws):
        x, y = (n % COLS) * THUMB, (n // COLS) * (THUMB + TEXT_H)
        ext = next((e for e in ("jpg", "png", "webp") if e in raw), None)
        size_note = "unreadable image"
        try:
            img = Image.open(io.BytesIO(raw[ext])).convert("RGB")
            size_note = f"{img.size[0]}x{img.size[1]}"
            img.thumbnail((THUMB - 8, THUMB - 8))
            sheet.paste(img, (x + (THUMB - img.size[0]) // 2, y + (THUMB - img.size[1]) // 2))
        except Exception:  # noqa: BLE001 - a broken file is drawn as a gray box with a note
            draw.rectangle([x + 20, y + 20, x + THUMB - 20, y + THUMB - 20], fill=(200, 200, 200))
        txt = raw.get("txt", b"")
        try:
            caption = txt.decode("utf-8")
        except UnicodeDecodeError:
            caption = txt.decode("ascii", errors="backslashreplace")
        lines = textwrap.wrap(caption or "(empty caption)", width=30)[:4]
        draw.text((x + 4, y + THUMB), "\n".join(lines), fill=(20, 20, 20), font=font)
        defect = defects.get(raw["__key__"], "clean")
        label = size_note if defect == "clean" else defect.replace("_", " ")
        draw.text((x + 4, y + 2), label, fill=(200, 0, 0) if defect != "clean" else (90, 90, 90),
                  font=font)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        sheet.save(tmp, "PNG")
    return out


def _raw_samples(urls: list[str], iter_shard):
    for url in urls:
        yield from iter_shard(url, on_error=lambda err: None)
