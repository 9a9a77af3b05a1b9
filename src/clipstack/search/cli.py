"""CLI for the search stage: `clipstack embed`, `clipstack index`, `clipstack serve`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed the images and captions of shards (clip-retrieval layout)",
                       description="Batched inference over shards; resumable per part.")
    p.add_argument("model", help="model name (clip-tiny, ViT-B-32...) or exported model folder")
    p.add_argument("shards", help="shard folder, file, or brace pattern (dir/{00000..00009}.tar)")
    p.add_argument("out_dir", help="output folder (img_emb/, text_emb/, metadata/, thumbs/)")
    p.add_argument("--pretrained", default=None, help="weights for a named model: a file, a model folder, a training checkpoint folder or hf-hub:org/repo")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--no-thumbnails", action="store_true", help="do not store thumbnails for the web page")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_embed)

    p = sub.add_parser("index", help="build FAISS indices from embeddings, chosen by size and memory",
                       description="Picks Flat / HNSW / IVF+SQ/PQ like autofaiss, tunes to a recall target.")
    p.add_argument("emb_dir", help="folder written by `clipstack embed` (or clip-retrieval inference)")
    p.add_argument("index_dir", help="output folder")
    p.add_argument("--max-memory", default="4G", help="memory budget for each index (default 4G)")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@10 to tune for")
    p.add_argument("--queries", type=int, default=500, help="held-out queries to measure recall with")
    p.add_argument("--flat-threshold", type=int, default=20_000, help="exact search up to this many rows")
    p.add_argument("--hnsw-threshold", type=int, default=50_000, help="HNSW up to this many rows")
    p.add_argument("--no-exact-fallback", action="store_true",
                   help="keep the approximate index even when exact search is as fast or more accurate")
    p.set_defaults(func=_index)

    p = sub.add_parser("serve", help="serve indices over a clip-retrieval-compatible API and a web page",
                       description="FastAPI + uvicorn; binds 127.0.0.1 unless told otherwise.")
    p.add_argument("--indices", required=True,
                   help='indices JSON ({"name": "index_dir"} or {"name": {"index_dir": .., "model": ..}}) '
                        "or one index folder")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=1234)
    p.add_argument("--allow-image-urls", action="store_true", help="let queries fetch remote image_url")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body")
    p.add_argument("--max-image-mb", type=float, default=8.0, help="largest decoded query image")
    p.add_argument("--max-batch", type=int, default=64, help="most concurrent queries run as one batch")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="log one line per request (default on)")
    p.set_defaults(func=_serve)


def _embed(args: argparse.Namespace) -> int:
    from clipstack.search.embed import embed

    stats = embed(args.model, args.shards, args.out_dir, pretrained=args.pretrained,
                  batch_size=args.batch_size, dtype=args.dtype, thumbnails=not args.no_thumbnails,
                  device=args.device)
    print(json.dumps(stats.to_dict()))
    return 0


def _index(args: argparse.Namespace) -> int:
    from clipstack.search.index import build_index

    info = build_index(args.emb_dir, args.index_dir, args.max_memory, target_recall=args.target_recall,
                       num_queries=args.queries, flat_threshold=args.flat_threshold,
                       hnsw_threshold=args.hnsw_threshold, exact_fallback=not args.no_exact_fallback)
    for modality, mod in info["modalities"].items():
        print(f"{modality}: {mod['key']} over {mod['rows']} rows, recall@{mod['k']}={mod['recall_at_k']:.3f} "
              f"(target {mod['target_recall']}{'' if mod['target_reached'] else ', NOT reached'}), "
              f"params {mod['search_params']}, built in {mod['build_seconds']:.1f}s, "
              f"{mod['size_bytes'] / 2**20:.1f} MiB")
    print(f"wrote {Path(args.index_dir) / 'index_info.json'}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import ipaddress

    import uvicorn

    from clipstack.search.server import ServerConfig, build_engine, create_app, load_indices_json

    path = Path(args.indices)
    if path.is_dir():
        indices = {path.resolve().name: {"index_dir": str(path.resolve())}}
    else:
        indices = load_indices_json(path)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"clipstack: warning: serving on {args.host}, reachable from other machines", file=sys.stderr)
    config = ServerConfig(indices=indices, allow_image_urls=args.allow_image_urls,
                          max_body_bytes=int(args.max_body_mb * 2**20),
                          max_image_bytes=int(args.max_image_mb * 2**20), max_batch=args.max_batch)
    app = create_app(build_engine(config), config)
    print(f"serving {', '.join(indices)} on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log)
    return 0
