"""CLIP's byte-pair-encoding tokenizer without torch, reading the bundle's BPE vocabulary file.

The facts it reproduces (OpenCLIP ``SimpleTokenizer``, default ``clean="lower"``):

- text cleaning: ``ftfy.fix_text``, HTML-unescape twice, strip; collapse whitespace runs to one
  space; lowercase;
- pre-tokenisation by the pattern ``<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|
  [\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` (case-insensitive): special tokens, English contractions,
  runs of letters, single digits, runs of other non-space characters;
- each piece's UTF-8 bytes mapped to printable characters (GPT-2's byte table), BPE-merged by
  rank with ``</w>`` marking the word end;
- vocabulary = 256 byte symbols, the same with ``</w>``, the first 48,894 merges of the file
  (lines 1..48894 after its header), then ``<start_of_text>``, ``<end_of_text>``;
- ids = start, pieces..., end; zero padded to the context length; a longer sequence is cut and
  its last id replaced by the end token.

``ftfy`` and ``regex`` are used when installed (they are what OpenCLIP uses). Without them
(Jetson images rarely have them) the cleaning is ``unicodedata`` NFC + HTML-unescape and the
pattern is scanned with ``unicodedata`` categories: identical on ordinary text; only ftfy's
mojibake repair is missing.
"""

from __future__ import annotations

import gzip
import html
import os
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from omg_rt.errors import BundleError, InvalidInputError

START_TOKEN = "<start_of_text>"
END_TOKEN = "<end_of_text>"
_NUM_MERGES = 49152 - 256 - 2  # OpenCLIP keeps merges[1 : 49152 - 256 - 2 + 1]
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (256 entries)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


class ClipTokenizer:
    """Text -> CLIP token ids, as OpenCLIP's ``SimpleTokenizer(context_length=...)``.

    Args:
        bpe_path: ``bpe_simple_vocab_16e6.txt.gz`` (the bundle's ``tokenizer.file``).
        context_length: ids per text (77 for OpenCLIP models; the tiny preset uses 16).
        use_optional_libraries: use ``ftfy``/``regex`` when importable (False forces the
            pure-Python path, for tests).
    """

    def __init__(
        self,
        bpe_path: str | os.PathLike[str],
        *,
        context_length: int = 77,
        use_optional_libraries: bool = True,
    ) -> None:
        if int(context_length) != context_length or context_length < 2:
            raise InvalidInputError(f"context_length: expected an int >= 2, got {context_length!r}")
        self.context_length = int(context_length)
        self.byte_encoder = bytes_to_unicode()
        merges = _read_merges(os.fspath(bpe_path))
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab.extend("".join(pair) for pair in merges)
        vocab.extend([START_TOKEN, END_TOKEN])
        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.start_id = self.encoder[START_TOKEN]
        self.end_id = self.encoder[END_TOKEN]
        self._cache: dict[str, str] = {START_TOKEN: START_TOKEN, END_TOKEN: END_TOKEN}
        self._fix_text: Callable[[str], str] | None = None
        self._pattern: Any = None  # a compiled ``regex`` pattern
        if use_optional_libraries:
            self._fix_text, self._pattern = _optional_libraries()

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Tokenise texts.

        Args:
            texts: one string or a sequence of N strings.

        Returns:
            (N, context_length) int64 ids, zero padded.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise InvalidInputError(
                f"texts: expected a string or a sequence of strings, got {type(texts).__name__}"
            )
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.end_id
            out[row, : len(ids)] = ids
        return out

    def encode(self, text: str) -> list[int]:
        """One string -> its BPE ids (no start/end tokens)."""
        ids: list[int] = []
        for piece in self._pieces(self._clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(mapped).split(" "))
        return ids

    def _clean(self, text: str) -> str:
        if self._fix_text is not None:
            text = self._fix_text(text)
        else:
            text = _basic_fix(text)
        text = html.unescape(html.unescape(text)).strip()
        return " ".join(text.split()).strip().lower()

    def _pieces(self, text: str) -> list[str]:
        if self._pattern is not None:
            pieces: list[str] = self._pattern.findall(text)
            return pieces
        return _scan(text)

    def _bpe(self, token: str) -> str:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        result = " ".join(word)
        self._cache[token] = result
        return result


# ftfy.fix_text's defaults that change ordinary text: Latin ligatures, curly quotes (U+02BC,
# U+2018-U+201B -> ', U+201C-U+201F -> "), character width (fullwidth ASCII and U+3000 to
# ASCII, halfwidth kana to their standard forms), then NFC.
_LIGATURES = {
    0x132: "IJ",
    0x133: "ij",
    0x149: "\u02bcn",
    0x1F1: "DZ",
    0x1F2: "Dz",
    0x1F3: "dz",
    0x1C4: "D\u017d",
    0x1C5: "D\u017e",
    0x1C6: "d\u017e",
    0x1C7: "LJ",
    0x1C8: "Lj",
    0x1C9: "lj",
    0x1CA: "NJ",
    0x1CB: "Nj",
    0x1CC: "nj",
    0xFB00: "ff",
    0xFB01: "fi",
    0xFB02: "fl",
    0xFB03: "ffi",
    0xFB04: "ffl",
    0xFB05: "\u017ft",
    0xFB06: "st",
}
_QUOTES = {
    0x2BC: "'",
    **{c: "'" for c in range(0x2018, 0x201C)},
    **{c: '"' for c in range(0x201C, 0x2020)},
}
_WIDTH = {0x3000: " ", **{c: chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)}}


def _basic_fix(text: str) -> str:
    text = text.translate(_LIGATURES).translate(_QUOTES).translate(_WIDTH)
    if any(0xFF61 <= ord(c) <= 0xFFDC for c in text):  # halfwidth katakana / hangul
        text = "".join(
            unicodedata.normalize("NFKC", c) if 0xFF61 <= ord(c) <= 0xFFDC else c for c in text
        )
    return unicodedata.normalize("NFC", text)


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


@lru_cache(maxsize=4)
def _read_merges(path: str) -> tuple[tuple[str, str], ...]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise BundleError(f"tokenizer vocabulary {path}: unreadable ({exc})") from exc
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    if len(merges) != _NUM_MERGES or any(len(pair) != 2 for pair in merges):
        raise BundleError(
            f"tokenizer vocabulary {path}: expected {_NUM_MERGES} merge pairs after the header "
            f"(OpenCLIP bpe_simple_vocab_16e6), got {len(merges)}"
        )
    return tuple(merges)  # type: ignore[arg-type]


def _optional_libraries() -> tuple[Callable[[str], str] | None, Any]:
    """(ftfy.fix_text or None, the compiled ``regex`` pattern or None)."""
    try:
        import ftfy

        fix_text = ftfy.fix_text
    except ImportError:
        fix_text = None
    try:
        import regex

        pattern = regex.compile(
            f"{START_TOKEN}|{END_TOKEN}"
            r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
    except ImportError:
        pattern = None
    return fix_text, pattern


def _kind(char: str) -> str:
    """'L' letter, 'N' number, 's' whitespace, 'o' anything else (the pattern's classes)."""
    if char.isspace():
        return "s"
    category = unicodedata.category(char)[0]
    return category if category in "LN" else "o"


def _scan(text: str) -> list[str]:
    """``regex.findall`` of the CLIP pattern, by hand: leftmost alternative wins at each step."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        matched = None
        for literal in (START_TOKEN, END_TOKEN, *_CONTRACTIONS):
            if text[i : i + len(literal)].lower() == literal:
                matched = text[i : i + len(literal)]
                break
        if matched is None:
            kind = _kind(text[i])
            if kind == "s":
                i += 1
                continue
            j = i + 1
            if kind != "N":  # letters and "other" characters come in runs; digits one by one
                while j < n and _kind(text[j]) == kind:
                    j += 1
            matched = text[i:j]
        pieces.append(matched)
        i += len(matched)
    return pieces
