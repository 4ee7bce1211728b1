"""The torch-free CLIP tokenizer gives OpenCLIP's ids, with and without ftfy/regex."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from omg_rt.errors import BundleError, InvalidInputError
from omg_rt.tokenizer import ClipTokenizer
from omg_rt.vocabulary import VILD_TEMPLATES, split_label

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

STRINGS = [
    "a photo of a dog.",
    "There is a large traffic light in the scene.",
    "person,child,girl,boy,woman,man,people",
    "Café déjà vu — naïve",
    "日本語のテキスト",
    "it's they're we've I'm you'll he'd DON'T",
    "x" * 300,
    "  spaces\t\nand\u00a0nbsp  ",
    "&amp;lt;b&amp;gt; html",
    "1234567 numbers 3.14",
    "emoji 🐶🐱 !!!",
    "<start_of_text> special <end_of_text>",
    "a_b-c/d (parentheses) [brackets]",
    "",
    "Привет мир",
    "١٢٣ arabic digits",
    "mixed123abc456",
    "it’s “quoted”",
    "ＬＯＵＤ　ＮＯＩＳＥＳ",
    "ﬂuﬃeﬆ",
    "Ünïcödé ÀÉÎ ß",
]


def _words() -> list[str]:
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyzéü0123456789 .,'!-_")
    return ["".join(rng.choice(alphabet, size=rng.integers(1, 40))) for _ in range(300)]


@pytest.mark.parametrize("optional_libraries", [True, False])
@pytest.mark.parametrize("context_length", [16, 77])
def test_ids_equal_open_clip_simple_tokenizer(optional_libraries, context_length):
    reference = open_clip_tokenizer.SimpleTokenizer(context_length=context_length)
    ours = ClipTokenizer(
        open_clip_tokenizer.default_bpe(),
        context_length=context_length,
        use_optional_libraries=optional_libraries,
    )
    texts = STRINGS + _words() + [t.format(s) for t in VILD_TEMPLATES for s in ("car", "stop light")]
    got = ours(texts)
    expected = reference(texts).numpy()
    assert got.dtype == np.int64 and got.shape == (len(texts), context_length)
    bad = [t for t, a, b in zip(texts, got, expected, strict=True) if (a != b).any()]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[:3]}"


def test_long_texts_are_cut_and_end_with_the_end_token():
    ours = ClipTokenizer(open_clip_tokenizer.default_bpe(), context_length=8)
    ids = ours("one two three four five six seven eight nine")[0]
    assert ids[0] == ours.start_id and ids[-1] == ours.end_id
    assert ours.vocab_size == 49408


def test_bad_vocabulary_file_and_arguments_raise_typed_errors(tmp_path):
    broken = tmp_path / "bpe.txt.gz"
    broken.write_bytes(gzip.compress(b"header\nab cd\n"))
    with pytest.raises(BundleError, match="expected 48894 merge pairs"):
        ClipTokenizer(broken)
    with pytest.raises(BundleError, match="unreadable"):
        ClipTokenizer(tmp_path / "missing.gz")
    with pytest.raises(InvalidInputError, match="context_length: expected an int >= 2"):
        ClipTokenizer(open_clip_tokenizer.default_bpe(), context_length=1)
    with pytest.raises(InvalidInputError, match="texts: expected a string"):
        ClipTokenizer(open_clip_tokenizer.default_bpe())([1, 2])


def test_split_label_follows_the_official_rules():
    assert split_label("traffic_light/Stop_Light") == ["traffic light", "stop light"]
    assert split_label("cat_or_kitten, feline ") == ["cat", "kitten", "feline"]
