"""`clipstack synth OUT_DIR`: generate the synthetic pool, its ground truth and the eval sets."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("synth", help="generate a seeded synthetic image-text pool, its ground truth and eval sets",
                       description="Write OUT_DIR/pool (shards in the ingest layout), OUT_DIR/ground_truth.parquet "
                                   "(hidden defect labels) and OUT_DIR/eval/<set> (CLIP_benchmark WebDataset "
                                   "layout). The same seed gives byte-identical shards; rerun to resume.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    p.add_argument("--samples", type=int, default=20000, help="pool size (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: min(2, CPUs))")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--zipf", type=float, default=1.0,
                   help="long-tail exponent of the shape and color distributions (0 = uniform; default 1.0)")
    p.add_argument("--multi-caption", type=float, default=0.3,
                   help="fraction of samples with extra descriptive rewrites (default 0.3)")
    p.add_argument("--caption-noise", type=float, default=0.25,
                   help="fraction of alt-texts with file names or stock phrases (default 0.25)")
    p.add_argument("--defect-rate", action="append", default=[], metavar="NAME=RATE",
                   help="override one defect rate, repeatable (e.g. exact_duplicate=0.05); "
                        "names: exact_duplicate, near_duplicate, mismatched_caption, empty_caption, "
                        "short_caption, non_utf8_caption, corrupt_image, truncated_image, too_small")
    p.add_argument("--no-defects", action="store_true", help="set every defect rate to 0")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation sets")
    p.add_argument("--eval-scale", type=float, default=1.0, help="multiply eval-set sizes (default 1.0)")
    p.add_argument("--preview", action="store_true", help="also write OUT_DIR/preview.png (a contact sheet)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)


def parse_rates(items: list[str], no_defects: bool) -> dict[str, float]:
    from clipstack.errors import ConfigError

    names = ["exact_duplicate", "near_duplicate", "mismatched_caption", "empty_caption", "short_caption",
             "non_utf8_caption", "corrupt_image", "truncated_image", "too_small"]
    rates = {name: 0.0 for name in names} if no_defects else {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--defect-rate: expected NAME=RATE with a number, got {item!r}")
    return rates


def handler(args: argparse.Namespace) -> int:
    from clipstack.data.synthetic.writer import generate

    summary = generate(args.out_dir, samples=args.samples, seed=args.seed, workers=args.workers,
                       shard_size=args.shard_size, zipf=args.zipf,
                       rates=parse_rates(args.defect_rate, args.no_defects),
                       multi_caption=args.multi_caption, caption_noise=args.caption_noise,
                       evalsets=not args.no_eval, eval_scale=args.eval_scale, preview=args.preview,
                       quiet=True if args.quiet else None)
    counts = summary["defect_counts"]
    defective = sum(v for k, v in counts.items() if k != "clean")
    print(f"pool: {summary['samples']} samples in {summary['shards']} shards -> {args.out_dir}/pool "
          f"({summary['pool_seconds']:.1f} s, {summary['workers']} workers)")
    print(f"ground truth: {args.out_dir}/ground_truth.parquet ({defective} injected defects: "
          + ", ".join(f"{k} {v}" for k, v in counts.items() if k != "clean") + ")")
    if "eval_sets" in summary:
        sets = summary["eval_sets"]
        print(f"eval sets: {args.out_dir}/eval/ ({', '.join(sets)}) in {summary['eval_seconds']:.1f} s")
    if "preview" in summary:
        print(f"preview: {summary['preview']}")
    return 0
