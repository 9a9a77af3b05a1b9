"""`clipstack ingest`: the data stage's command (argparse only at import; the work is imported lazily)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "ingest", help="images + captions (folder, table of paths/URLs, shards) -> clean WebDataset shards",
        description="Read SRC (a folder of images with sidecar .txt files or a captions.csv; a CSV/TSV/"
                    "parquet/JSONL table with image path-or-URL and caption columns; or .tar shards), "
                    "check, fetch, resize and re-encode every row, and write WebDataset shards in "
                    "img2dataset's layout to OUT_DIR. Every row ends kept or dropped with a reason "
                    "(OUT_DIR/_stats.json, OUT_DIR/_ledger.parquet). Rerun the same command to resume: "
                    "finished shards are kept (damaged ones redone); a rerun with other input, column, "
                    "shard-size or image options is refused (use a new OUT_DIR), while --processes, "
                    "--threads, --timeout and --retries may change.")
    p.add_argument("src", metavar="SRC", help="input folder, table file, or shards (a .tar, folder or {a..b} pattern)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder for the shards")
    g = p.add_argument_group("input")
    g.add_argument("--source-kind", choices=("auto", "folder", "table", "wds"), default="auto",
                   help="kind of SRC (default: detect)")
    g.add_argument("--url-col", default=None,
                   help="table column with the image path or URL (default: url, path, image, file...)")
    g.add_argument("--caption-col", action="append", default=None, metavar="COL",
                   help="caption column; repeat for several captions per image (default: caption or text)")
    g.add_argument("--key-col", default=None, help="column with a unique sample key (default: generated)")
    g = p.add_argument_group("images")
    g.add_argument("--resize-mode", choices=("no", "keep_ratio", "center_crop", "border"), default="keep_ratio",
                   help="img2dataset's resize modes (default keep_ratio)")
    g.add_argument("--image-size", type=int, default=256, help="target side in pixels (default 256)")
    g.add_argument("--resize-only-if-bigger", action="store_true", help="never upscale")
    g.add_argument("--encode-format", choices=("jpg", "png", "webp"), default="jpg",
                   help="stored image format (default jpg)")
    g.add_argument("--encode-quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    g.add_argument("--min-image-size", type=int, default=0,
                   help="drop images whose smaller side is below this (too_small; default 0)")
    g.add_argument("--max-pixels", type=int, default=89_478_485,
                   help="drop images declaring more pixels (decompression_bomb; default 89478485)")
    g = p.add_argument_group("work")
    g.add_argument("--shard-size", type=int, default=10_000, help="input rows per shard (default 10000)")
    g.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    g.add_argument("--threads", type=int, default=16, help="concurrent downloads per process (default 16)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    g.add_argument("--retries", type=int, default=2, help="HTTP retries after a failure (default 2)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle_ingest)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers up front, naming the option as typed (not a field deep inside)."""
    import math

    from clipstack.errors import ConfigError

    checks = [
        ("--timeout", args.timeout, math.isfinite(args.timeout) and args.timeout > 0, "must be > 0 seconds"),
        ("--retries", args.retries, args.retries >= 0, "must be >= 0"),
        ("--max-pixels", args.max_pixels, args.max_pixels >= 1, "must be >= 1"),
        ("--min-image-size", args.min_image_size, args.min_image_size >= 0, "must be >= 0"),
        ("--image-size", args.image_size, args.image_size >= 1, "must be >= 1"),
        ("--shard-size", args.shard_size, args.shard_size >= 1, "must be >= 1"),
        ("--processes", args.processes, args.processes >= 1, "must be >= 1"),
        ("--threads", args.threads, args.threads >= 1, "must be >= 1"),
        ("--encode-quality", args.encode_quality, 0 <= args.encode_quality <= 100, "must be 0..100"),
    ]
    for flag, value, ok, why in checks:
        if not ok:
            raise ConfigError(f"{flag} {value}: {why}")


def handle_ingest(args: argparse.Namespace) -> int:
    from clipstack.data.ingest import IngestConfig, ingest
    from clipstack.data.resize import Resizer

    _check_options(args)
    resizer = Resizer(image_size=args.image_size, resize_mode=args.resize_mode,
                      resize_only_if_bigger=args.resize_only_if_bigger, encode_format=args.encode_format,
                      encode_quality=args.encode_quality, min_image_size=args.min_image_size,
                      max_pixels=args.max_pixels)
    cfg = IngestConfig(source_kind=args.source_kind, url_col=args.url_col, caption_cols=args.caption_col,
                       key_col=args.key_col, shard_size=args.shard_size, processes=args.processes,
                       threads=args.threads, timeout=args.timeout, retries=args.retries, resizer=resizer)
    result = ingest(args.src, args.out_dir, cfg, show_progress=False if args.no_progress else None)
    print(result.summary())
    return 0
