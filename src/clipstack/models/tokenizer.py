"""CLIP's byte-level BPE tokenizer, giving the same ids as OpenAI's and OpenCLIP's.

Text is cleaned (ftfy, HTML entities unescaped twice, whitespace collapsed, lower-cased), split by a
regex into words, each word is mapped byte-by-byte to printable unicode and merged by the BPE ranks in
`bpe_simple_vocab_16e6.txt.gz` (MIT, see LICENSE.bpe_simple_vocab). A caption becomes
`[<start_of_text>, ...ids, <end_of_text>]`, zero-padded to the context length; a caption that is too
long is cut and its last kept token replaced by <end_of_text>, so the EOT (the highest id) is always
present for the text tower's argmax pooling.
"""

from __future__ import annotations

import functools
import gzip
import html
import string
from pathlib import Path

import ftfy
import regex
import torch

from clipstack.errors import ConfigError

BPE_PATH = Path(__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<start_of_text>", "<end_of_text>"
NUM_MERGES = 49152 - 256 - 2  # vocab = 256 bytes + 256 word-final bytes + merges + 2 special tokens
_CACHE_LIMIT = 200_000  # words; bounded so tokenizing a huge corpus does not grow memory forever


@functools.lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable unicode characters.

    Printable latin-1 bytes map to themselves; the rest (control chars, space...) are shifted to
    code points from 256 up, so no BPE symbol is whitespace or a control character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    # insertion order is the vocab order of the 256 byte symbols: printable first, then shifted ones
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def _clean_basic(text: str) -> str:
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _clean_lower(text: str) -> str:
    return " ".join(_clean_basic(text).split()).lower()


def _clean_whitespace(text: str) -> str:
    return " ".join(_clean_basic(text).split())


def _clean_canonicalize(text: str) -> str:
    """big_vision's canonical form (SigLIP prompts): no punctuation, lower case."""
    text = _clean_basic(text).replace("_", " ").translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.lower().split())


_CLEANERS = {"lower": _clean_lower, "whitespace": _clean_whitespace, "canonicalize": _clean_canonicalize}


@functools.lru_cache(maxsize=2)
def _load_bpe(bpe_path: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """(symbol -> id, merge pair -> rank), read once per process (every tokenizer shares them)."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")[1 : NUM_MERGES + 1]  # line 0 is a version header
    merges = [tuple(line.split()) for line in lines]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    return {symbol: i for i, symbol in enumerate(vocab)}, {pair: rank for rank, pair in enumerate(merges)}


class Tokenizer:
    """`tokenizer(texts, context_length=None) -> LongTensor[N, context_length]`."""

    def __init__(self, context_length: int = 77, clean: str = "lower", bpe_path: str | Path = BPE_PATH):
        if clean not in _CLEANERS:
            raise ConfigError(f"tokenizer clean={clean!r}; use one of {sorted(_CLEANERS)}")
        self.context_length = context_length
        self.clean = _CLEANERS[clean]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}

        self.encoder, self.bpe_ranks = _load_bpe(str(bpe_path))
        self.decoder = {i: symbol for symbol, i in self.encoder.items()}
        self.vocab_size = len(self.encoder)
        self.sot_token_id, self.eot_token_id = self.encoder[SOT], self.encoder[EOT]
        # words: the special tokens, contractions, letter runs, single digits, punctuation runs
        self.pattern = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
        )
        self._cache: dict[str, list[int]] = {}

    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-tokenized word (already byte-mapped): merge the best-ranked pair until none."""
        if word in (SOT, EOT):
            return [self.encoder[word]]
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = [*word[:-1], word[-1] + "</w>"]  # the last symbol carries the end-of-word marker
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(symbols):  # merge every occurrence of `best`, left to right
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.encoder[s] for s in symbols]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without <start_of_text>/<end_of_text>."""
        ids: list[int] = []
        for word in self.pattern.findall(self.clean(text)):
            ids.extend(self._bpe("".join(self.byte_encoder[b] for b in word.encode("utf-8"))))
        return ids

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of `ids` (special tokens kept, word ends become spaces), as OpenCLIP decodes."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        context_length = context_length or self.context_length
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
