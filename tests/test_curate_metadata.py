"""Metadata building: WordNet database parsing, corpus unigrams and PMI bigrams, titles, and use in matching."""

import json
import math
from pathlib import Path

import pytest

from clipstack.curate.matching import Matcher
from clipstack.curate.metadata import build_metadata, corpus_ngrams, wordnet_lemmas
from clipstack.errors import DataError

WORDNET = Path("/usr/share/wordnet")

# Lines in the WordNet 3.0 data-file format: offset, lexfile, type, hex word count, (word, lex_id)...
FAKE_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived
02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 | a member of the genus Canis
07713895 13 n 02 ice_cream 0 icecream 0 001 @ 07612632 n 0000 | frozen dessert
"""
FAKE_ADJ = """00001740 00 a 01 able 0 005 = 05207437 n 0000 | having the necessary means
01384212 00 s 02 big(a) 0 large(p) 0 001 & 01382086 a 0000 | above average in size
"""


def test_wordnet_format_parsing(tmp_path):
    (tmp_path / "data.noun").write_text(FAKE_NOUN)
    (tmp_path / "data.adj").write_text(FAKE_ADJ)
    assert wordnet_lemmas(tmp_path) == ["entity", "dog", "domestic dog", "Canis familiaris", "ice cream",
                                        "icecream", "able", "big", "large"]
    with pytest.raises(DataError, match="no WordNet data files"):
        wordnet_lemmas(tmp_path / "missing")


@pytest.mark.skipif(not (WORDNET / "data.noun").exists(), reason="Debian wordnet-base not installed")
def test_real_wordnet_database():
    lemmas = wordnet_lemmas(WORDNET)
    assert len(lemmas) > 100_000 and len(lemmas) == len(set(lemmas))
    for word in ("physical entity", "dog", "ice cream", "New York", "red", "quickly"):
        assert word in lemmas, word
    assert not any("_" in w or w.endswith("(a)") for w in lemmas[:5000])


def test_unigrams_and_pmi_bigrams():
    texts = ["hot dog stand", "hot dog, cold drink", "the dog and the cat", "the cat sat", "hot sun"] * 4
    uni, bi = corpus_ngrams(texts, min_count=8, min_pmi=1.7, min_bigram_count=4)
    assert set(uni) == {"hot", "dog", "the", "cat"}  # 12, 12, 12, 8 occurrences; the rest < 8
    # 68 words, 44 bigrams (none across the comma); PMI(hot dog) = ln((8/44) / ((12/68)(12/68))) = 1.764
    assert math.isclose(math.log((8 / 44) / ((12 / 68) ** 2)), 1.764, abs_tol=1e-3)
    assert "hot dog" in bi and "dog cold" not in bi
    assert "hot dog" not in corpus_ngrams(texts, 8, 1.8, 4)[1]
    assert "hot dog" not in corpus_ngrams(texts, 8, 1.7, 9)[1]  # 8 < min_bigram_count


def test_build_with_titles_and_match(tmp_path):
    (tmp_path / "data.noun").write_text(FAKE_NOUN)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a hot dog at the fair", "hot dog and fries", "a dog at the beach"] * 5))
    titles = tmp_path / "titles.txt"
    titles.write_text("Star Wars\n\nhot dog\n")
    out = tmp_path / "meta.json"
    entries, counts = build_metadata(out, wordnet=tmp_path, corpus=[corpus], min_count=5, min_pmi=0.3,
                                     min_bigram_count=5, titles=titles)
    assert json.loads(out.read_text()) == entries
    assert counts["wordnet"] == 6 and counts["titles"] == 1  # "hot dog" came from the corpus already
    assert "hot dog" in entries and "Star Wars" in entries and "dog" in entries
    matched = Matcher(entries).match_one("A hot dog, then Star Wars.")
    assert {entries[i] for i in matched} >= {"hot dog", "dog", "Star Wars"}
    with pytest.raises(DataError, match="no entries"):
        build_metadata(tmp_path / "x.json", wordnet=None)


def test_lines_that_are_not_utf8_are_skipped_and_reported(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"hot dog stand\n\xff\xfe bad bytes\ncaf\xe9 latin-1\nhot dog stand\n" * 3)
    titles = tmp_path / "titles.txt"
    titles.write_bytes(b"Star Wars\nCaf\xe9 Society\n")
    warnings: list[str] = []
    entries, counts = build_metadata(tmp_path / "m.json", wordnet=None, corpus=[corpus], min_count=1,
                                     titles=titles, warn=warnings.append)
    assert not any("\ufffd" in e for e in entries), "no replacement-character entries"
    assert "hot" in entries and "Star Wars" in entries and counts["titles"] == 1
    assert warnings == [f"{corpus}: skipped 6 corpus file line(s) that are not UTF-8 (first: line 2)",
                        f"{titles}: skipped 1 titles file line(s) that are not UTF-8 (first: line 2)"]


def test_missing_inputs_are_named_before_any_work_and_broken_corpus_shards_reported(tmp_path):
    with pytest.raises(DataError, match="nope.txt: titles file not found"):
        build_metadata(tmp_path / "m.json", wordnet="/nonexistent", titles=tmp_path / "nope.txt")
    with pytest.raises(DataError, match="gone.txt: corpus file not found"):
        build_metadata(tmp_path / "m.json", wordnet="/nonexistent", corpus=[tmp_path / "gone.txt"])
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar archive" * 40)
    warnings: list[str] = []
    with pytest.raises(DataError, match="no entries"):
        build_metadata(tmp_path / "m.json", wordnet=None, corpus=[broken], warn=warnings.append)
    assert len(warnings) == 1 and warnings[0].startswith(f"corpus {broken}: skipped") and "broken.tar" in warnings[0]
