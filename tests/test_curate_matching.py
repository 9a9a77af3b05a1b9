"""MetaCLIP substring matching: ours (Aho-Corasick, batched) against a plain reference from the spec."""

import json
import random

import numpy as np
import pytest

from clipstack.curate.matching import load_metadata, make_matcher, spacing
from clipstack.errors import DataError


def reference_spacing(text):
    # Straight from the spec: pad, wrap each punctuation mark in spaces, then tab/newline/CR to space.
    spaced = f" {text} "
    for punct in [",", ".", ";", ":", "?", "!", "`"]:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in ["\t", "\n", "\r"]:
        spaced = spaced.replace(char, " ")
    return spaced


def reference_substr_matching(text, metadata):
    spaced = reference_spacing(text)
    return [i for i, entry in enumerate(metadata) if f" {entry} " in spaced]


WORDS = ["cat", "Cat", "CAT", "dog", "New", "York", "new york", "café", "cafe\u0301", "naïve", "東京",
         "straße", "STRASSE", "ice", "cream", "ice cream", "sun", "set", "sunset", "a", "the", "of",
         "U.S.", "e.g", "mr", "Mr.", "C++", "rock'n'roll", "x-ray", "co-op", "🙂", "ümlaut", "İstanbul",
         "ǅ", "ﬁre", "fire", "1080p", "3.14", "hello world", "world", "über", "niño", "Ωmega", "tab\tword"]
PUNCT = [",", ".", ";", ":", "?", "!", "`", "'", '"', "-", "(", ")", "/", "\t", "\n", "\r", "  ", " ",
         "\u00a0", "\u2009", "…", "。", "、"]


def random_caption(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 12)):
        word = rng.choice(WORDS)
        if rng.random() < 0.2:
            word = word.upper() if rng.random() < 0.5 else word.lower()
        parts.append(word)
        parts.append(rng.choice(PUNCT) if rng.random() < 0.5 else " ")
    return "".join(parts).strip(" ") if rng.random() < 0.7 else "".join(parts)


def metadata_list(rng: random.Random):
    entries = list(dict.fromkeys(WORDS))
    entries += ["ice cream ,", ". cat", "", " cat", "cat ", "new  york", "York !", "cat cat", "dog"]
    for _ in range(200):
        entries.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))))
    for _ in range(60):  # long entries (titles), and ones that share long prefixes
        entries.append(" ".join(rng.choice(WORDS[:8]) for _ in range(rng.randint(4, 9))))
    return entries  # keeps duplicates on purpose: MetaCLIP reports every id of a repeated entry


def test_spacing_matches_reference():
    rng = random.Random(1)
    for _ in range(2000):
        text = random_caption(rng)
        assert spacing(text) == reference_spacing(text)


@pytest.mark.parametrize("method", ["aho", "tokens"])
def test_matching_equals_reference_on_thousands_of_captions(method):
    rng = random.Random(0)
    metadata = metadata_list(rng)
    captions = [random_caption(rng) for _ in range(3000)]
    for i in range(0, 3000, 3):  # plant entries (long ones too) inside captions
        captions[i] = f"{captions[i]} {rng.choice(metadata)}{rng.choice(PUNCT)}{random_caption(rng)}"
    matcher = make_matcher(metadata, method)
    offsets, ids = matcher.match(captions)
    total = 0
    for i, caption in enumerate(captions):
        expected = reference_substr_matching(caption, metadata)
        assert ids[offsets[i]:offsets[i + 1]].tolist() == expected, repr(caption)
        total += len(expected)
    assert total > 3000  # the test exercises real matches, not just empty lists
    counts = matcher.count([captions[:1000], captions[1000:]])
    assert counts.dtype == np.uint64
    expected_counts = np.zeros(len(metadata), dtype=np.uint64)
    for caption in captions:
        for entry_id in reference_substr_matching(caption, metadata):
            expected_counts[entry_id] += 1
    np.testing.assert_array_equal(counts, expected_counts)


@pytest.mark.parametrize("method", ["aho", "tokens"])
def test_batch_boundaries_do_not_matter(method):
    rng = random.Random(3)
    metadata = metadata_list(rng)
    captions = [random_caption(rng) for _ in range(500)]
    matcher = make_matcher(metadata, method)
    whole = matcher.match(captions)
    for i in (0, 1, 17, 499):
        assert matcher.match_one(captions[i]) == whole[1][whole[0][i]:whole[0][i + 1]].tolist()
    # a caption holding the batch sentinel (a private-use character) takes the per-caption path
    odd = captions[:50] + ["cat \ue000 dog", "\ud800 lone surrogate cat"] + captions[50:100]
    offsets, ids = matcher.match(odd)
    for i, caption in enumerate(odd):
        assert ids[offsets[i]:offsets[i + 1]].tolist() == reference_substr_matching(caption, metadata)
    offsets, ids = matcher.match(captions[:50] + ["\ud800 lone surrogate cat"])
    assert ids[offsets[50]:].tolist() == reference_substr_matching("\ud800 lone surrogate cat", metadata)


@pytest.mark.parametrize("method", ["aho", "tokens"])
def test_edge_cases(method):
    matcher = make_matcher(["cat", "", "a cat", ".", "tab\tword"], method)
    assert matcher.match_one("cat") == [0]
    assert matcher.match_one("Cat") == []  # case-sensitive, as MetaCLIP
    assert matcher.match_one("cat.") == [0, 1, 3]  # " cat .  " ends in a double space
    assert matcher.match_one("a  cat") == [0, 1]  # the empty entry matches a double space
    assert matcher.match_one("tab\tword") == []
    assert matcher.match([])[0].tolist() == [0]
    assert make_matcher([], method).match(["cat"])[0].tolist() == [0, 0]
    assert make_matcher(["tab\tonly"], method).match(["tab only"])[0].tolist() == [0, 0]
    with pytest.raises(ValueError, match="match method"):
        make_matcher(["cat"], "regex")


def test_load_metadata_formats(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(["cat", "ice cream", "東京"]), encoding="utf-8")
    assert load_metadata(tmp_path / "m.json") == ["cat", "ice cream", "東京"]
    (tmp_path / "m.txt").write_text("cat\nice cream\n\n", encoding="utf-8")
    assert load_metadata(tmp_path / "m.txt") == ["cat", "ice cream"]
    (tmp_path / "bad.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="bad.json"):
        load_metadata(tmp_path / "bad.json")
    with pytest.raises(DataError, match="not found"):
        load_metadata(tmp_path / "missing.json")
