"""Curation throughput: MetaCLIP substring matching (clipstack vs the reference `substr_matching`) and
balancing, with a generated 500k-entry metadata list.

    .venv/bin/python benchmarks/curate.py                       # default: ~1 minute on 2 cores
    .venv/bin/python benchmarks/curate.py --captions 1000000 --ref-captions 200

The reference is MetaCLIP's algorithm as published (spacing, then `" " + entry + " " in text` for every
entry), written here from the spec; both run single-threaded on the same captions and must agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from clipstack.curate.balance import balance_mask, entry_probabilities
from clipstack.curate.matching import Matcher
from clipstack.curate.tokenmatch import TokenMatcher

PUNCT = [",", ".", ";", ":", "!", "?", " -", " (", ")", "\n", "`", "'s"]


def make_vocab(n: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words, seen = [], set()
    while len(words) < n:
        w = "".join(rng.choice(letters, size=int(rng.integers(2, 10))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def make_metadata(vocab: list[str], size: int, rng: np.random.Generator) -> list[str]:
    """Unigrams, then bigrams and trigrams of Zipf-distributed words (like WordNet + n-grams + titles)."""
    entries = dict.fromkeys(vocab[: size // 5])
    zipf = _zipf(len(vocab))
    while len(entries) < size:
        k = int(rng.choice([2, 3], p=[0.7, 0.3]))
        for gram in rng.choice(len(vocab), size=(50_000, k), p=zipf):
            entries.setdefault(" ".join(vocab[i] for i in gram))
            if len(entries) >= size:
                break
    return list(entries)


def _zipf(n: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** 1.05
    return p / p.sum()


def make_captions(vocab: list[str], n: int, rng: np.random.Generator) -> list[str]:
    zipf = _zipf(len(vocab))
    lengths = rng.integers(4, 16, size=n)
    words = rng.choice(len(vocab), size=int(lengths.sum()), p=zipf)
    puncts = rng.integers(0, len(PUNCT) * 4, size=len(words))
    out, pos = [], 0
    for length in lengths:
        parts = []
        for j in range(pos, pos + length):
            w = vocab[words[j]]
            parts.append(w.capitalize() if puncts[j] % 7 == 0 else w)
            parts.append(PUNCT[puncts[j]] + " " if puncts[j] < len(PUNCT) else " ")
        out.append("".join(parts).strip())
        pos += length
    return out


def reference_substr_matching(text: str, spaced_metadata: list[str]) -> list[int]:
    spaced = f" {text} "
    for punct in [",", ".", ";", ":", "?", "!", "`"]:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in ["\t", "\n", "\r"]:
        spaced = spaced.replace(char, " ")
    return [i for i, entry in enumerate(spaced_metadata) if entry in spaced]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--captions", type=int, default=200_000)
    ap.add_argument("--ref-captions", type=int, default=40, help="captions for the (slow) reference")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--t", type=float, default=500.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    vocab = make_vocab(120_000, rng)
    metadata = make_metadata(vocab, args.entries, rng)
    captions = make_captions(vocab, args.captions, rng)
    t_gen = time.perf_counter() - t0

    t0 = time.perf_counter()
    matcher = Matcher(metadata)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    tmatcher = TokenMatcher(metadata)
    t_tbuild = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    csr = [matcher.match(captions[i:i + args.batch]) for i in range(0, len(captions), args.batch)]
    t_match, c_match = time.perf_counter() - t0, time.process_time() - c0
    n_matches = sum(len(ids) for _, ids in csr)
    t0, c0 = time.perf_counter(), time.process_time()
    tcsr = [tmatcher.match(captions[i:i + args.batch]) for i in range(0, len(captions), args.batch)]
    t_tok, c_tok = time.perf_counter() - t0, time.process_time() - c0
    same = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(csr, tcsr))

    spaced_metadata = [f" {e} " for e in metadata]
    ref_caps = captions[: args.ref_captions]
    t0, c0 = time.perf_counter(), time.process_time()
    ref = [reference_substr_matching(c, spaced_metadata) for c in ref_caps]
    t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0
    ours = csr[0][1][csr[0][0][0]:csr[0][0][len(ref_caps)]].tolist() if ref_caps else []
    agree = sum(ref, []) == ours

    counts = np.zeros(len(metadata), dtype=np.uint64)
    for _, ids in csr:
        counts += np.bincount(ids, minlength=len(metadata)).astype(np.uint64)
    probs = entry_probabilities(counts, args.t)
    uids = rng.integers(0, 2**63, size=len(captions), dtype=np.int64).astype(np.uint64)
    t0, c0 = time.perf_counter(), time.process_time()
    kept, start = 0, 0
    for offsets, ids in csr:
        n = len(offsets) - 1
        kept += int(balance_mask(offsets, ids, probs, uids[start:start + n], seed=0).sum())
        start += n
    t_bal, c_bal = time.perf_counter() - t0, time.process_time() - c0

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# curate benchmark: {len(metadata):,} metadata entries, {len(captions):,} captions "
          f"({n_matches / len(captions):.1f} matches/caption), python {sys.version.split()[0]}, "
          f"{cores} cores visible, single-threaded")
    print(f"data generation {t_gen:.1f}s; build (once per metadata list): automaton {t_build:.1f}s, "
          f"token tables {t_tbuild:.1f}s")
    print("rates per wall second and per CPU second (the machine is shared: CPU time is the per-core figure)")
    print()
    rows = [("reference substr_matching (pure Python)", len(ref_caps), t_ref, c_ref),
            ("clipstack Matcher (Aho-Corasick, batch)", len(captions), t_match, c_match),
            ("clipstack TokenMatcher (n-gram hashing)", len(captions), t_tok, c_tok),
            (f"clipstack balance_mask (t={args.t:g})", len(captions), t_bal, c_bal)]
    ref_cpu_rate = len(ref_caps) / max(c_ref, 1e-9)
    print(f"| {'step':<40} | {'captions':>9} | {'wall s':>7} | {'CPU s':>7} | {'captions/wall s':>15} | "
          f"{'captions/CPU s':>14} | {'vs reference (CPU)':>18} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 17}|{'-' * 16}|{'-' * 20}|")
    for name, count, wall, cpu in rows:
        ratio = f"{count / max(cpu, 1e-9) / ref_cpu_rate:,.0f}x" if "balance" not in name else "-"
        print(f"| {name:<40} | {count:>9,} | {wall:>7.2f} | {cpu:>7.2f} | {count / wall:>15,.0f} | "
              f"{count / max(cpu, 1e-9):>14,.0f} | {ratio:>18} |")
    print()
    print(f"results agree with the reference on {len(ref_caps)} captions: {agree}; Aho-Corasick and "
          f"token matchers agree on all {len(captions):,}: {same}; balancing kept {kept:,} of {len(captions):,}")
    for name, cpu in (("Aho-Corasick", c_match), ("TokenMatcher", c_tok)):
        rate = len(captions) / max(cpu, 1e-9)
        print(f"targets, {name}: >= 50x reference: {'met' if rate / ref_cpu_rate >= 50 else 'MISSED'} "
              f"({rate / ref_cpu_rate:,.0f}x); >= 100k captions/s per core: "
              f"{'met' if rate >= 100_000 else 'MISSED'} ({rate:,.0f} per CPU second)")
    return 0 if agree and same else 1


if __name__ == "__main__":
    sys.exit(main())
