"""Training loader throughput and resume cost, side by side in one run.

Rows: batches/s and samples/s of `clipstack.data.loader.TrainLoader` with 0 and 2 DataLoader workers,
and the time to resume at the middle of an epoch (a) by replaying saved raw stream positions (tar
reading only) versus (b) by replaying with image decoding (the fallback without positions).

    python benchmarks/train_loader.py                 # writes a small synthetic pool to a temp folder
    python benchmarks/train_loader.py --shards DIR    # your own shards
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _pool(root: Path, samples: int, per_shard: int) -> Path:
    import io

    import numpy as np
    from PIL import Image

    from clipstack.data.shards import Sample, write_shard, write_sizes

    rng = np.random.default_rng(0)
    out = root / "pool"
    for s in range(samples // per_shard):
        batch = []
        for i in range(per_shard):
            arr = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=90)
            batch.append(Sample(key=f"{s:05d}{i:04d}", image=buf.getvalue(), captions=[f"caption {i}", "other"]))
        write_shard(out, s, batch)
    write_sizes(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", help="shard folder or pattern (default: a generated pool)")
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()

    import torch

    from clipstack.data.loader import LoaderSpec, TrainLoader, resolve_sources
    from clipstack.data.transforms import image_transform
    from clipstack.models import get_tokenizer

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    urls = args.shards or str(_pool(Path(tmp.name), args.samples, 256))
    sources = resolve_sources([("data", urls, 1.0)])

    def spec(workers: int) -> LoaderSpec:
        return LoaderSpec(sources=sources, batch_size=args.batch, transform=image_transform(args.image_size, True),
                          tokenizer=get_tokenizer("clip-tiny"), workers=workers, shuffle_buffer=256)

    rows = []
    for workers in (0, 2):
        t = time.perf_counter()
        batches = list(TrainLoader(spec(workers), epoch=0))
        dt = time.perf_counter() - t
        rows.append((f"epoch, {workers} workers", len(batches), dt, len(batches) * args.batch / dt))
    full = list(TrainLoader(spec(0), epoch=0))
    half = len(full) // 2
    positions: dict = {}
    for b in full[:half]:
        positions.update(b["stats"]["position"])
    for label, pos in (("resume mid-epoch, saved positions", positions), ("resume mid-epoch, decode replay", None)):
        t = time.perf_counter()
        first = next(iter(TrainLoader(spec(0), epoch=0, start_step=half, positions=pos)))
        dt = time.perf_counter() - t
        assert first["keys"] == full[half]["keys"]
        rows.append((label + " (to 1st batch)", 1, dt, float("nan")))
    print(f"{'case':50} {'batches':>8} {'seconds':>9} {'samples/s':>10}")
    for name, n, dt, sps in rows:
        print(f"{name:50} {n:8d} {dt:9.2f} {sps:10.0f}")
    print(f"resume speed-up from saved positions: {rows[3][2] / rows[2][2]:.1f}x")


if __name__ == "__main__":
    main()
