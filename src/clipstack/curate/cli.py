"""`clipstack curate` and `clipstack metadata build` (argparse only at import; work happens in handlers)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("curate", help="filter, deduplicate and MetaCLIP-balance a pool of shards",
                       description="Curate IN_SHARDS into OUT_DIR/shards with subset.npy, ledger.parquet "
                                   "and _stats.json (in == kept + dropped).")
    p.add_argument("in_shards", help="input shards: a folder, a brace pattern or a tar")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--steps", default="text,basic,exact,phash,caption",
                   help="comma-separated, applied in order: text,basic,exact,phash,caption,clip,embed,balance")
    p.add_argument("--metadata", help="metadata list for balance: MetaCLIP's JSON list or one entry per line")
    p.add_argument("--match-method", choices=["aho", "tokens"], default="aho",
                   help="metadata matching: Aho-Corasick, or token n-gram hashing (same result, faster)")
    p.add_argument("--t", type=float, default=20000.0, help="balancing threshold t (MetaCLIP: 20k for 400M)")
    p.add_argument("--seed", type=int, default=0, help="seed of the balancing draws")
    p.add_argument("--min-words", type=int, default=2, help="basic: keep captions with more words than this")
    p.add_argument("--min-chars", type=int, default=5, help="basic: keep captions with more chars than this")
    p.add_argument("--min-side", type=int, default=200, help="basic: smallest allowed image side (px)")
    p.add_argument("--max-aspect", type=float, default=3.0, help="basic: largest allowed aspect ratio")
    p.add_argument("--phash-threshold", type=int, default=4,
                   help="phash: max Hamming distance of near duplicates")
    p.add_argument("--phash-size", type=int, default=8,
                   help="phash: DCT hash side; 8 = 64-bit hash, 16 = 256-bit (sharper images; use ~16)")
    p.add_argument("--embed-threshold", type=float, default=0.95,
                   help="embed: min cosine similarity of duplicates")
    p.add_argument("--clip-model", help="clip/embed: model config name or saved model folder")
    p.add_argument("--clip-pretrained", help="clip/embed: pretrained weights for --clip-model")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--clip-threshold", type=float, help="clip: keep samples scoring at least this")
    g.add_argument("--clip-fraction", type=float, help="clip: keep this top fraction by score")
    p.add_argument("--batch-size", type=int, default=256, help="samples per matching/scoring batch")
    p.add_argument("--device", default="cpu", help="torch device for clip/embed")
    p.add_argument("--workers", type=int, default=1,
                   help="processes reading shards in pass 1 (not with clip/embed); same result")
    p.add_argument("--report", action="store_true", help="write report/ with PNG plots and summary.md")
    p.add_argument("--ground-truth", help="ground_truth.parquet to score steps against "
                                          "(default: next to the pool folder, when present)")
    p.set_defaults(func=_curate)

    m = sub.add_parser("metadata", help="build a MetaCLIP metadata list (WordNet, unigrams, bigrams, titles)")
    msub = m.add_subparsers(dest="metadata_command", metavar="ACTION", required=True)
    b = msub.add_parser("build", help="build a metadata JSON list from WordNet, a corpus and titles")
    b.add_argument("out", help="output JSON file (a list of strings, MetaCLIP's format)")
    b.add_argument("--wordnet", default="/usr/share/wordnet",
                   help="WordNet database folder (Debian wordnet-base); 'none' to skip")
    b.add_argument("--corpus", nargs="*", default=[],
                   help="text files (one document per line) or shard folders/tars (captions)")
    b.add_argument("--min-count", type=int, default=100, help="unigrams: minimum corpus count")
    b.add_argument("--min-pmi", type=float, default=3.4,
                   help="bigrams: minimum PMI, ln(p(ab)/(p(a)p(b))) (3.4 = 30x chance)")
    b.add_argument("--min-bigram-count", type=int, default=5, help="bigrams: minimum corpus count")
    b.add_argument("--titles", help="a file of titles, one per line")
    b.set_defaults(func=_metadata_build)


def _curate(args: argparse.Namespace) -> int:
    from clipstack.curate.pipeline import CurateConfig, curate

    cfg = CurateConfig(
        steps=[s.strip() for s in args.steps.split(",") if s.strip()], metadata=args.metadata,
        match_method=args.match_method,
        balance_t=args.t, seed=args.seed, min_words=args.min_words, min_chars=args.min_chars,
        min_side=args.min_side, max_aspect=args.max_aspect, phash_threshold=args.phash_threshold,
        phash_size=args.phash_size,
        embed_threshold=args.embed_threshold, clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained, clip_threshold=args.clip_threshold,
        clip_fraction=args.clip_fraction, batch_size=args.batch_size, device=args.device,
        workers=args.workers)
    if args.ground_truth:  # checked now, not after the whole curation has run
        from clipstack.curate.report import check_ground_truth

        check_ground_truth(args.ground_truth)
    result = curate(args.in_shards, args.out_dir, cfg)
    stats = result.stats
    print(f"in {stats['in']}  kept {stats['kept']}  dropped {stats['dropped']}")
    for step, size in stats["sizes_after_step"].items():
        reasons = stats["dropped_by_step"].get(step, {})
        detail = ", ".join(f"{r} {c}" for r, c in reasons.items())
        print(f"  after {step:<8} {size:>8}" + (f"   dropped: {detail}" if detail else ""))
    print(f"wrote {result.out_dir / 'shards'}, subset.npy, ledger.parquet, _stats.json")
    if args.report:
        from clipstack.curate.report import find_ground_truth, write_report

        gt = args.ground_truth or find_ground_truth(args.in_shards)
        summary = write_report(result, Path(args.out_dir) / "report", gt)
        print(summary)
    return 0


def _metadata_build(args: argparse.Namespace) -> int:
    from clipstack.curate.metadata import build_metadata

    wordnet = None if args.wordnet in ("", "none") else args.wordnet
    entries, counts = build_metadata(args.out, wordnet=wordnet, corpus=args.corpus, min_count=args.min_count,
                                     min_pmi=args.min_pmi, min_bigram_count=args.min_bigram_count,
                                     titles=args.titles)
    parts = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"wrote {args.out}: {len(entries)} entries ({parts})")
    return 0
