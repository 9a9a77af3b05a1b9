"""Serving: latency and throughput of POST /knn-service on loopback next to the bare index search time.

    .venv/bin/python benchmarks/serve.py                  # 100k 512-d vectors, ~1-2 min here
    .venv/bin/python benchmarks/serve.py --rows 300000 --requests 3000 --concurrency 1 8 32

`clipstack serve` runs as a separate process over three indices of the same clustered vectors: the one
`clipstack index` picks (IVF, nprobe for recall@10 >= 0.95), the same IVF at a wider nprobe (a slower,
more exact search), and exact Flat. A client keeps a fixed number of requests in flight (a bounded,
closed-loop load) and sends embedding_input queries (512 floats as JSON, k=10, no dedup, 500 distinct
queries in turn), so the model is not part of the timing. `--embeddings EMB_DIR` serves a model's real
image embeddings instead and sends the text embeddings of 500 of its captions. The client is wrk (C; Debian's `wrk`, `make
benchdeps`) when installed, which leaves the two cores to the server, else an httpx async client, whose
own Python costs ~1 ms per request on this machine. "bare search" is the same index, loaded the same way,
answering one query per call in this process. "HTTP floor" is an ASGI app that reads the body and sends
ten fixed results, under the same uvicorn and client: what any Python server pays before doing work.
"lean bound" is an ASGI app that parses, searches, looks up and writes JSON with nothing else (no
validation, limits or metrics): how close a Python server can come to the bare search here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import load_embeddings, make_vectors  # noqa: E402 - the same data as benchmarks/search.py


def write_embeddings(root: Path, xb: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipstack.search import layout

    for modality in ("image",):
        path = layout.emb_path(root, modality, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, xb)
    keys = [f"{i:09d}" for i in range(len(xb))]
    layout.metadata_path(root, 0).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"key": keys, "caption": [f"caption of {k}" for k in keys]}),
                   layout.metadata_path(root, 0))


def bare_search_ms(index_dir: Path, xq: np.ndarray) -> float:
    from clipstack.search.index import SearchIndex

    index = SearchIndex(index_dir)
    times = []
    for q in xq:
        start = time.perf_counter()
        index.search("image", q[None], 10)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


async def load(url: str, bodies: list[str], concurrency: int) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = iter(bodies)

    async def worker(client):
        nonlocal errors
        for body in queue:
            start = time.perf_counter()
            try:
                res = await client.post(f"{url}/knn-service", content=body)
                ok = res.status_code == 200 and len(res.json()) == 10
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, errors, wall


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies, i = {}, 0
for line in io.lines("%s") do bodies[#bodies + 1] = line end
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%.1f %%.1f %%d\\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99),
    summary.duration))
end
"""


def load_wrk(url: str, bodies: list[str], concurrency: int, seconds: int, tmp: Path) -> tuple:
    """(requests, errors, p50 s, p99 s, wall s) from wrk: `concurrency` connections, one thread."""
    (tmp / "bodies.jsonl").write_text("\n".join(bodies) + "\n")
    (tmp / "post.lua").write_text(WRK_SCRIPT % (tmp / "bodies.jsonl"))
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s",
                          str(tmp / "post.lua"), f"{url}/knn-service"], capture_output=True, text=True,
                         timeout=seconds + 60)
    match = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", out.stdout)
    if not match:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    n, errors, p50_us, p99_us, wall_us = match.groups()
    return int(n), int(errors), float(p50_us) / 1e6, float(p99_us) / 1e6, int(wall_us) / 1e6


EMPTY_BODY = json.dumps([{"id": i, "similarity": 0.5, "key": f"{i:09d}", "caption": f"caption of {i:09d}"}
                         for i in range(10)]).encode()


async def lifespan(receive, send) -> None:
    """Answer uvicorn's startup and shutdown for the bare ASGI apps below."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def empty_app(scope, receive, send):
    """The HTTP floor: an ASGI app that reads the request and sends ten fixed results, nothing else."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": EMPTY_BODY})


def lean_app(index_dir: str):
    """The lower bound for a Python server: an ASGI app that parses the JSON body, normalizes the
    vector, searches, looks up metadata and writes JSON, with no validation, routing, metrics or limits."""
    import pydantic_core

    from clipstack.search.index import SearchIndex

    index = SearchIndex(index_dir)
    headers = [(b"content-type", b"application/json")]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if scope["path"] == "/healthz":
            body = b"{}"
        else:
            vec = np.array(pydantic_core.from_json(b"".join(chunks))["embedding_input"], dtype=np.float32)
            scores, ids = index.search("image", (vec / np.sqrt(vec @ vec))[None], 10)
            ids_list = ids[0].tolist()
            body = pydantic_core.to_json([{**row, "id": i, "similarity": s} for row, i, s in
                                          zip(index.lookup(ids_list), ids_list, scores[0].tolist())])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def start_server(cmd: list[str], url: str) -> subprocess.Popen:
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_ready(url, server)
    return server


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def batch_stats(url: str) -> tuple[int, float, float]:
    """(batches, queries, seconds) the server's engine has run so far, from its /metrics."""
    import httpx

    text = httpx.get(f"{url}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("clipstack_batch_size_", "clipstack_batch_seconds_"))}
    return (int(values["clipstack_batch_size_count"]), values["clipstack_batch_size_sum"],
            values["clipstack_batch_seconds_sum"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--embeddings", metavar="EMB_DIR",
                        help="serve a model's image embeddings (`clipstack embed` output) and query with its "
                             "text embeddings, instead of clustered random vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--requests", type=int, default=1500, help="requests per (index, concurrency)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads, here and in the server")
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto",
                        help="load generator (auto: wrk when installed)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk: seconds per row (Flat: half)")
    parser.add_argument("--no-access-log", action="store_true", help="serve without per-request log lines")
    parser.add_argument("--wide-nprobe", type=int, default=16,
                        help="also serve the IVF index at this nprobe (a slower, more exact search); 0: no")
    parser.add_argument("--empty-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--lean-server", nargs=2, metavar=("PORT", "INDEX_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.empty_server or args.lean_server:
        import uvicorn

        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        app, port = ((empty_app, args.empty_server) if args.empty_server
                     else (lean_app(args.lean_server[1]), int(args.lean_server[0])))
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
        return 0
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("CLIPSTACK_NO_PROGRESS", "1")
    from clipstack.search.index import build_index

    if args.embeddings:
        xb, xq = load_embeddings(args.embeddings, 500)
        data = f"{len(xb):,} x {xb.shape[1]} model image embeddings ({args.embeddings}), text-embedding queries"
    else:
        xb, xq = make_vectors("clustered", args.rows, 500, args.dim)
        data = f"{args.rows:,} x {args.dim} clustered vectors"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_embeddings(root / "emb", xb)
        build_index(root / "emb", root / "auto", "4G", num_queries=200)
        build_index(root / "emb", root / "flat", "4G", num_queries=50, flat_threshold=10**9)
        names = ["auto"]
        auto_info = json.loads((root / "auto" / "index_info.json").read_text())
        if args.wide_nprobe and "nprobe" in auto_info["modalities"]["image"].get("search_params", {}):
            shutil.copytree(root / "auto", root / "wide")
            auto_info["modalities"]["image"]["search_params"]["nprobe"] = args.wide_nprobe
            (root / "wide" / "index_info.json").write_text(json.dumps(auto_info))
            names.append("wide")
        names.append("flat")
        labels = {}
        for name in names:
            info = json.loads((root / name / "index_info.json").read_text())["modalities"]["image"]
            params = ",".join(f"{k}={v}" for k, v in info.get("search_params", {}).items())
            labels[name] = f"{name} ({info['key']}{' ' + params if params else ''})"
        (root / "indices.json").write_text(json.dumps({name: name for name in names}))

        def measure(url: str, bodies: list[str], conc: int, seconds: int) -> tuple:
            """(requests, errors, p50 ms, p99 ms, wall s) with the chosen client."""
            asyncio.run(load(url, bodies[:20], conc))  # warm-up
            if client == "wrk":
                n_req, errors, p50, p99, wall = load_wrk(url, bodies[:500], conc, seconds, root)
                return n_req, errors, 1000 * p50, 1000 * p99, wall
            lat, errors, wall = asyncio.run(load(url, bodies, conc))
            p50, p99 = (1000 * float(np.percentile(lat, p)) for p in (50, 99))
            return len(bodies), errors, p50, p99, wall

        def bodies_for(name: str, n_req: int) -> list[str]:
            return [json.dumps({"embedding_input": xq[i % len(xq)].tolist(), "indice_name": name,
                                "num_images": 10, "deduplicate": False}) for i in range(n_req)]

        def bare_app_p50(server_args) -> float:
            """p50 ms, 1 in flight, of this script serving one of its bare apps (server_args(port))."""
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server = start_server([sys.executable, __file__, "--threads", str(args.threads),
                                   *server_args(port)], url)
            try:
                return measure(url, bodies_for("auto", args.requests), 1, args.seconds)[2]
            finally:
                stop_server(server)

        floor = bare_app_p50(lambda port: ["--empty-server", str(port)])
        lean = bare_app_p50(lambda port: ["--lean-server", str(port), str(root / "auto")])

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server([sys.executable, "-m", "clipstack", "serve", "--indices", str(root / "indices.json"),
                               "--port", str(port)] + (["--no-access-log"] if args.no_access_log else []), url)
        try:
            load_desc = (f"wrk, {args.seconds:g} s per row" if client == "wrk"
                         else f"httpx, {args.requests} requests per row")
            print(f"# {data}, k=10, embedding_input queries, "
                  f"client {load_desc}, FAISS threads {args.threads}, {os.cpu_count()} CPUs; "
                  "server and client share the machine")
            print(f"# HTTP floor: an empty ASGI app under the same uvicorn and client, 1 in flight: "
                  f"p50 {floor:.3f} ms")
            bare = {name: bare_search_ms(root / name, xq[:200]) for name in names}
            print(f"# lean bound: an ASGI app that only parses, searches the auto index, looks up and "
                  f"writes JSON, same uvicorn and client, 1 in flight: p50 {lean:.3f} ms = "
                  f"{lean / bare['auto']:.1f}x bare search")
            head = ("| index | in flight | requests | errors | p50 ms | p99 ms | QPS | bare search ms | "
                    "p50 / bare | engine ms per batch | p50 - floor - engine ms | mean batch |")
            print(head)
            print("|" + "|".join("---" for _ in head.split("|")[1:-1]) + "|")
            for name in names:
                for conc in args.concurrency:
                    n_req = args.requests if name != "flat" else max(100, args.requests // 5)
                    seconds = args.seconds if name != "flat" else max(2, args.seconds // 2)
                    count0, sum0, secs0 = batch_stats(url)
                    n_req, errors, p50, p99, wall = measure(url, bodies_for(name, n_req), conc, seconds)
                    count1, sum1, secs1 = batch_stats(url)
                    batches = max(1, count1 - count0)
                    engine = 1000 * (secs1 - secs0) / batches
                    own = f"{p50 - floor - engine:.3f}" if conc == 1 else "-"
                    print(f"| {labels[name]} | {conc} | {n_req} | {errors} | {p50:.2f} | {p99:.2f} | "
                          f"{n_req / wall:.0f} | {bare[name]:.3f} | {p50 / bare[name]:.1f}x | {engine:.3f} | {own} | "
                          f"{(sum1 - sum0) / batches:.1f} |", flush=True)
        finally:
            stop_server(server)
    return 0


def _wait_ready(url: str, server: subprocess.Popen) -> None:
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not become ready")


if __name__ == "__main__":
    sys.exit(main())
