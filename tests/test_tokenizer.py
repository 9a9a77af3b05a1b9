"""The CLIP BPE tokenizer: ids identical to open_clip's on hard strings, truncation, padding, decode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipstack.errors import ConfigError
from clipstack.models import Tokenizer, get_tokenizer
from clipstack.models.tokenizer import BPE_PATH

pytestmark = pytest.mark.usefixtures("one_torch_thread")


HARD_STRINGS = [
    "",
    "   ",
    "a photo of a cat",
    "A Photo Of A CAT!!!",
    "Héllo wörld, naïve café, Ünïcödé",
    "emoji 😀🎉👩‍👩‍👧‍👦 flags 🇫🇷 skin 👍🏽",
    "&amp;amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39; &nbsp;",
    "<start_of_text> inside <end_of_text> text",
    "日本語のテキストと中文和한국어",
    "ＡＢＣ１２３ fullwidth, ﬁ ligature, \u200b zero width, \u00ad soft hyphen",
    "can't won't I'm they'll we've she'd it's",
    "tabs\tand\nnewlines\r\nand   many    spaces",
    "numbers 1234567890 3.14159 1,000,000 2024-01-01",
    "mojibake: Ã©tÃ© â€œquotesâ€\x9d",
    "punctuation !!!??? ... ---- ((( ))) @#$%^&*",
    "http://example.com/path?query=1&b=2#frag",
    "x" * 300,
    "word " * 200,
    "ab" * 100 + " supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def test_vocab_and_special_ids():
    tok = Tokenizer()
    assert tok.vocab_size == 49408
    assert tok.sot_token_id == 49406 and tok.eot_token_id == 49407
    assert BPE_PATH.is_file() and (BPE_PATH.parent / "LICENSE.bpe_simple_vocab").is_file()


def test_layout_padding_and_truncation():
    tok = get_tokenizer("clip-tiny")
    out = tok(["a cat", "word " * 100])
    assert out.shape == (2, 32) and out.dtype == torch.long
    row = out[0].tolist()
    assert row[0] == 49406 and row[3] == 49407 and row[4:] == [0] * 28
    assert out[1, -1].item() == 49407 and (out[1] != 0).all()  # truncated: EOT replaces the last token
    assert (out.argmax(dim=-1) == torch.tensor([3, 31])).all()
    assert tok("a cat", context_length=8).shape == (1, 8)
    assert get_tokenizer("ViT-B-32").context_length == 77


def test_known_ids_and_decode():
    tok = Tokenizer()
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tok.decode(tok.encode("Hello, World!")) == "hello , world ! "


def test_matches_open_clip_on_hard_strings():
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    ref = open_clip_tokenizer.SimpleTokenizer()
    ours = Tokenizer()
    assert ours.encoder == ref.encoder
    for ctx in (77, 16):
        torch.testing.assert_close(ours(HARD_STRINGS, context_length=ctx), ref(HARD_STRINGS, context_length=ctx))
    for text in HARD_STRINGS:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids)


def test_clean_modes_match_open_clip():
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    for clean in ("whitespace", "canonicalize"):
        ref = open_clip_tokenizer.SimpleTokenizer(clean=clean)
        torch.testing.assert_close(Tokenizer(clean=clean)(HARD_STRINGS), ref(HARD_STRINGS))
    with pytest.raises(ConfigError, match="clean"):
        Tokenizer(clean="upper")


def test_hf_tokenizer_config_is_refused():
    cfg = {"embed_dim": 8, "vision_cfg": {}, "text_cfg": {"hf_tokenizer_name": "timm/ViT-B-16-SigLIP"}}
    with pytest.raises(ConfigError, match="hf_tokenizer_name"):
        get_tokenizer(cfg)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=60), min_size=1, max_size=3))
def test_matches_open_clip_on_random_unicode(texts):
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    torch.testing.assert_close(_ours()(texts, context_length=24), _ref(open_clip_tokenizer)(texts, context_length=24))


_TOKENIZERS: dict = {}


def _ours():
    return _TOKENIZERS.setdefault("ours", Tokenizer())


def _ref(module):
    return _TOKENIZERS.setdefault("ref", module.SimpleTokenizer())
