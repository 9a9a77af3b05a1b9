"""Search: exact (Flat) vs the index `clipstack index` picks, side by side, on 512-d vectors.

    .venv/bin/python benchmarks/search.py                 # 100k rows, both distributions (~2 min here)
    .venv/bin/python benchmarks/search.py --full          # adds 1M rows (several minutes, ~8 GB RAM)
    .venv/bin/python benchmarks/search.py --sizes 1000000 --dists clustered --threads 2
    .venv/bin/python benchmarks/search.py --dists --embeddings EMB_DIR   # a model's real embeddings only

Distributions: `random` (i.i.d. normal, normalized: the worst case for any ANN index, no structure) and
`clustered` (embedding-like: 2000 cluster centres, a 64-d low-rank spread and small isotropic noise,
normalized; nearest-neighbour cosine ~0.78 as between related CLIP image embeddings). Queries are fresh
draws from the same distribution (held out). `--embeddings EMB_DIR` adds a row on a model's real
embeddings as `clipstack embed` writes them (clip-retrieval's layout): every image embedding is indexed
and the text embeddings of a random sample of captions are the queries, i.e. text -> image search as the
server runs it. Both sides search one query at a time (as a server does)
with the same FAISS thread count; recall@10 is against exact search. The auto index is built exactly as
`clipstack index` builds it (`build_one`: plan, train on a sample, tune nprobe/efSearch to the target).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def make_vectors(dist: str, n: int, nq: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if dist == "random":
        xb = rng.standard_normal((n, dim), dtype=np.float32)
        xq = rng.standard_normal((nq, dim), dtype=np.float32)
    else:
        centers = rng.standard_normal((2000, dim), dtype=np.float32) / np.sqrt(dim)
        basis = rng.standard_normal((dim, 64), dtype=np.float32) * (0.6 / np.sqrt(dim * 64))

        def draw(m: int) -> np.ndarray:
            out = np.empty((m, dim), np.float32)
            for lo in range(0, m, 100_000):  # chunks keep the temporaries small at 1M rows
                k = min(100_000, m - lo)
                z = rng.standard_normal((k, 64), dtype=np.float32)
                out[lo:lo + k] = (centers[rng.integers(0, len(centers), k)] + z @ basis.T
                                  + 0.25 * rng.standard_normal((k, dim), dtype=np.float32) / np.sqrt(dim))
            return out

        xb, xq = draw(n), draw(nq)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return xb, xq


def load_embeddings(emb_dir: str, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings, text-embedding queries) from a `clipstack embed` folder."""
    from clipstack.search import layout

    parts = layout.list_parts(emb_dir)
    xb = np.concatenate([np.load(layout.emb_path(emb_dir, "image", p)) for p in parts]).astype(np.float32)
    texts = np.concatenate([np.load(layout.emb_path(emb_dir, "text", p)) for p in parts]).astype(np.float32)
    pick = np.random.default_rng(seed).choice(len(texts), size=min(nq, len(texts)), replace=False)
    return np.ascontiguousarray(xb), np.ascontiguousarray(texts[pick])


def single_query_qps(search, xq: np.ndarray, budget_s: float) -> float:
    """Queries per second, one query per call, over as many queries as fit in `budget_s` (>= 5)."""
    start, done = time.perf_counter(), 0
    for i in range(len(xq)):
        search(xq[i:i + 1])
        done += 1
        if done >= 5 and time.perf_counter() - start > budget_s:
            break
    return done / (time.perf_counter() - start)


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(dist: str, n: int, args) -> dict:
    import faiss

    from clipstack.search.index import build_one, recall_at_k
    from clipstack.search.select import parse_memory

    if dist == "model":
        xb, xq = load_embeddings(args.embeddings, args.queries)
        n = len(xb)
    else:
        xb, xq = make_vectors(dist, n, args.queries, args.dim)
    k = 10
    start = time.perf_counter()
    _, truth = faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    exact_batched_s = time.perf_counter() - start
    exact_qps = single_query_qps(lambda q: faiss.knn(q, xb, k, metric=faiss.METRIC_INNER_PRODUCT), xq,
                                 args.time_budget)
    before = rss_mib()
    index, info = build_one(xb, parse_memory(args.max_memory), queries=xq[: args.tune_queries],
                            target_recall=args.target_recall, desc=f"{dist}-{n}")
    grown = rss_mib() - before
    _, found = index.search(xq, k)
    recall = recall_at_k(found, truth)  # on all queries, not only the ones used for tuning
    auto_qps = single_query_qps(lambda q: index.search(q, k), xq, args.time_budget)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.index")
        faiss.write_index(index, path)
        size = os.path.getsize(path)
    label = f"model {xb.shape[1]}d" if dist == "model" else dist
    return {"dist": label, "n": n, "exact_mb": xb.nbytes / 2**20, "exact_qps": exact_qps,
            "exact_batched_ms": 1000 * exact_batched_s / len(xq), "key": info["key"],
            "params": info["search_params"], "build_s": info["build_seconds"], "index_mb": size / 2**20,
            "rss_grown_mb": grown, "auto_qps": auto_qps, "recall": recall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--full", action="store_true", help="also 1,000,000 rows")
    parser.add_argument("--dists", nargs="*", default=["random", "clustered"], choices=["random", "clustered"])
    parser.add_argument("--embeddings", metavar="EMB_DIR",
                        help="also a row on a model's embeddings (a `clipstack embed` output folder)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300, help="held-out queries (recall is over all)")
    parser.add_argument("--tune-queries", type=int, default=150, help="of which used to tune the index")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--max-memory", default="4G")
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads for both sides")
    parser.add_argument("--time-budget", type=float, default=8.0, help="seconds per QPS measurement")
    args = parser.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    os.environ.setdefault("CLIPSTACK_NO_PROGRESS", "1")
    sizes = sorted(set(args.sizes + ([1_000_000] if args.full else [])))
    print(f"# dim {args.dim}, {args.queries} held-out queries, k=10, target recall {args.target_recall}, "
          f"budget {args.max_memory}, {args.threads} FAISS thread(s), {os.cpu_count()} CPUs, "
          f"faiss {faiss.__version__}")
    head = (f"| {'vectors':>9} | {'data':>9} | {'exact MB':>8} | {'exact QPS':>9} | {'auto index':<14} | "
            f"{'params':<13} | {'build s':>7} | {'index MB':>8} | {'auto QPS':>8} | {'recall@10':>9} | "
            f"{'QPS ratio':>9} |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    runs = [(dist, n) for n in sizes for dist in args.dists] + ([("model", 0)] if args.embeddings else [])
    for dist, n in runs:
        r = run_one(dist, n, args)
        params = ",".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        print(f"| {r['n']:>9,} | {r['dist']:>9} | {r['exact_mb']:>8.0f} | {r['exact_qps']:>9.1f} | "
              f"{r['key']:<14} | {params:<13} | {r['build_s']:>7.1f} | {r['index_mb']:>8.0f} | "
              f"{r['auto_qps']:>8.0f} | {r['recall']:>9.3f} | {r['auto_qps'] / r['exact_qps']:>8.1f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
