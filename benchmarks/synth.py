"""Synthetic pool generation: throughput vs worker count, and peak memory vs pool size (streaming).

Each configuration runs in a fresh child process, which reports its own peak RSS and its workers'
peak RSS (`getrusage`), so one row's memory does not leak into the next. Pool only (no eval sets).

    python benchmarks/synth.py                                   # default, about a minute on 2 cores
    python benchmarks/synth.py --runs 1x4000 2x4000 2x16000 2x64000
    python benchmarks/synth.py --runs 16x1000000 --shard-size 2000   # the 1M-sample scale run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(samples: int, workers: int, shard_size: int, out: str) -> None:
    from clipstack.data.synthetic import generate

    os.environ["CLIPSTACK_NO_PROGRESS"] = "1"
    t0 = time.time()
    summary = generate(out, samples=samples, workers=workers, shard_size=shard_size, evalsets=False,
                       quiet=True)
    wall = time.time() - t0
    self_ru, kids_ru = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    pool_bytes = sum(p.stat().st_size for p in Path(out, "pool").glob("*.tar"))
    print(json.dumps({
        "samples": samples, "workers": workers, "wall_s": wall, "pool_s": summary["pool_seconds"],
        "cpu_s": self_ru.ru_utime + self_ru.ru_stime + kids_ru.ru_utime + kids_ru.ru_stime,
        "parent_rss_mb": self_ru.ru_maxrss / 1024, "worker_rss_mb": kids_ru.ru_maxrss / 1024,
        "tar_bytes_per_sample": pool_bytes / samples,
        "gt_mb": Path(out, "ground_truth.parquet").stat().st_size / 2**20,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=["1x4000", "2x4000", "2x16000"],
                    help="WORKERSxSAMPLES configurations (default: 1x4000 2x4000 2x16000)")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder, deleted)")
    ap.add_argument("--child", nargs=4, metavar=("SAMPLES", "WORKERS", "SHARD_SIZE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), int(args.child[2]), args.child[3])
        return
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="synth-bench-"))
    rows = []
    for run in args.runs:
        workers, samples = (int(x) for x in run.lower().split("x"))
        out = scratch / f"w{workers}-n{samples}"
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run([sys.executable, __file__, "--child", str(samples), str(workers),
                               str(args.shard_size), str(out)], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        shutil.rmtree(out, ignore_errors=True)
        print(f"done {run}: {rows[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    if not args.dir:
        shutil.rmtree(scratch, ignore_errors=True)
    base = rows[0]
    print(f"machine: {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f} at the end")
    print("| workers | samples | wall s | samples/s | vs first row | CPU s / 1k samples | parent peak RSS MB "
          "| worker peak RSS MB | tar KB/sample | ground truth MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r["samples"] / r["wall_s"]
        print(f"| {r['workers']} | {r['samples']} | {r['wall_s']:.1f} | {rate:.0f} | "
              f"{rate / (base['samples'] / base['wall_s']):.2f}x | {1000 * r['cpu_s'] / r['samples']:.2f} | "
              f"{r['parent_rss_mb']:.0f} | {r['worker_rss_mb']:.0f} | {r['tar_bytes_per_sample'] / 1024:.1f} | "
              f"{r['gt_mb']:.2f} |")


if __name__ == "__main__":
    main()
