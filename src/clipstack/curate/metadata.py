"""`clipstack metadata build`: a MetaCLIP-style metadata list from WordNet, a corpus and titles.

Sources, in MetaCLIP's order: every WordNet lemma (read from the database files Debian's wordnet-base
installs, `data.{noun,verb,adj,adv}`: underscores become spaces, adjective markers like `(a)` go),
corpus unigrams with count >= min_count, corpus bigrams with PMI = ln(p(ab) / (p(a) p(b))) >= min_pmi
(and count >= min_bigram_count, so one-off pairs do not pass on chance alone), then titles. Tokens come
from MetaCLIP's own spacing, so every entry built here can match the captions it was counted on. The
output is a JSON array of unique strings, MetaCLIP's released format.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from clipstack.curate.matching import CHARS_TO_SPACE, PUNCTS_TO_WRAP, spacing
from clipstack.errors import DataError

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")


def wordnet_lemmas(folder: str | os.PathLike) -> list[str]:
    """All lemma names in the WordNet database files, in file order, unique."""
    folder = Path(folder)
    found = [folder / name for name in WORDNET_FILES if (folder / name).exists()]
    if not found:
        raise DataError(f"{folder}: no WordNet data files ({', '.join(WORDNET_FILES)}); install Debian's "
                        "wordnet-base (make sysdeps) or pass --wordnet none")
    lemmas: dict[str, None] = {}
    for path in found:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):  # the license header
                    continue
                fields = line.split(" ", 4 + 2 * 64)
                try:
                    count = int(fields[3], 16)
                except (IndexError, ValueError):
                    continue
                for j in range(count):
                    word = _ADJ_MARKER.sub("", fields[4 + 2 * j]).replace("_", " ")
                    lemmas[word] = None
    return list(lemmas)


def _tokens(text: str) -> list[str]:
    return spacing(text).split(" ")


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def text_lines(path: Path, what: str, warn: Callable[[str], None] = _stderr) -> Iterator[str]:
    """The UTF-8 lines of a text file, without newlines. Lines that are not UTF-8 are skipped, not
    turned into U+FFFD entries, and their count is reported once through `warn`."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a file")
    bad, first_bad = 0, 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                bad += 1
                first_bad = first_bad or number
    if bad:
        warn(f"{path}: skipped {bad} {what} line(s) that are not UTF-8 (first: line {first_bad})")


def _is_shards(path: Path) -> bool:
    return path.is_dir() or str(path).endswith(".tar") or "{" in str(path)


def corpus_texts(paths: Iterable[str | os.PathLike], warn: Callable[[str], None] = _stderr) -> Iterator[str]:
    """Lines of text files, or the captions of shards (a folder of tars, a tar, a brace pattern).
    Unreadable shards and samples are skipped and reported through `warn`, one line per shard."""
    from clipstack.data.shards import read_samples

    for path in paths:
        p = Path(path)
        if _is_shards(p):
            errors: list[str] = []
            for sample in read_samples(path, on_error=lambda err, seen=errors: seen.append(str(err))):
                yield from sample.captions[:1]
            if errors:  # one line, not one per sample: a pool may hold thousands of defects
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                warn(f"corpus {p}: skipped {len(errors)} unreadable sample(s) or shard(s): {errors[0]}{more}")
        else:
            yield from text_lines(p, "corpus file", warn)


def corpus_ngrams(texts: Iterable[str], min_count: int, min_pmi: float, min_bigram_count: int,
                  ) -> tuple[list[str], list[str]]:
    """(unigrams with count >= min_count, bigrams with PMI >= min_pmi), most frequent first."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for text in texts:
        words = [w for w in _tokens(text) if w and w not in PUNCTS_TO_WRAP]
        # a bigram never spans punctuation: " a , b " cannot match "a b"
        runs, run = [], []
        for w in _tokens(text):
            if not w:
                continue
            if w in PUNCTS_TO_WRAP:
                runs.append(run)
                run = []
            else:
                run.append(w)
        runs.append(run)
        unigrams.update(words)
        for run in runs:
            bigrams.update(zip(run, run[1:]))
    total_uni = sum(unigrams.values()) or 1
    total_bi = sum(bigrams.values()) or 1
    uni = [w for w, c in unigrams.most_common() if c >= min_count]
    scored = []
    for (a, b), c in bigrams.items():
        if c < min_bigram_count:
            continue
        pmi = math.log((c / total_bi) / ((unigrams[a] / total_uni) * (unigrams[b] / total_uni)))
        if pmi >= min_pmi:
            scored.append((-c, f"{a} {b}"))
    return uni, [text for _, text in sorted(scored)]


def _usable(entry: str) -> bool:
    return bool(entry.strip()) and not any(c in entry for c in CHARS_TO_SPACE)


def build_metadata(out: str | os.PathLike, wordnet: str | os.PathLike | None = "/usr/share/wordnet",
                   corpus: Iterable[str | os.PathLike] = (), min_count: int = 100, min_pmi: float = 3.4,
                   min_bigram_count: int = 5, titles: str | os.PathLike | None = None,
                   warn: Callable[[str], None] = _stderr) -> tuple[list[str], dict[str, int]]:
    """Build and write the list; returns (entries, new entries contributed by each source). Input that
    cannot be read (lines that are not UTF-8, broken shards) is skipped and reported through `warn`."""
    from clipstack.io import write_json

    corpus = [Path(c) for c in corpus]
    for path, what in [(c, "corpus file") for c in corpus if not _is_shards(c)] + (
            [(Path(titles), "titles file")] if titles else []):
        if not path.is_file():  # before WordNet and the corpus are read, not after
            raise DataError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a file")
    entries: dict[str, None] = {}
    counts: dict[str, int] = {}

    def add(source: str, items: Iterable[str]) -> None:
        before = len(entries)
        for item in items:
            item = item.strip(" ")
            if _usable(item):
                entries.setdefault(item, None)
        counts[source] = len(entries) - before

    if wordnet:
        add("wordnet", wordnet_lemmas(wordnet))
    if corpus:
        uni, bi = corpus_ngrams(corpus_texts(corpus, warn), min_count, min_pmi, min_bigram_count)
        add("unigrams", uni)
        add("bigrams", bi)
    if titles:
        add("titles", list(text_lines(Path(titles), "titles file", warn)))
    if not entries:
        raise DataError("metadata build: no entries (give --wordnet, --corpus or --titles)")
    result = list(entries)
    write_json(out, result, indent=None)
    return result, counts
