"""Texts and text pairs -> token ids, exactly as the Hugging Face fast tokenizer makes them with
`tokenizer(text, truncation=True)` / `tokenizer(text, text_pair, truncation=True)`, at a cost that grows with the
text's length only as far as the text matters.

Single texts: `tokenizers` with truncation at max_length. A text far beyond the limit (say 1 MB) is not tokenized
whole: its first `max_length * PREFIX_CHARS_PER_TOKEN` characters are, and that prefix's tokens are used when they
provably are the whole text's; otherwise the whole text is tokenized.

Pairs: each side is tokenized alone (as `tokenizers` does inside a pair encoding), longest_first truncation is
computed from the two token counts (`longest_first`, the algorithm of tokenizers' `truncate_encodings`), and the
kept tokens are put into the model's pair template (`PairTemplate`: special tokens and token type ids, read from
the tokenizer's own pair encoding of probe pairs). `tokenizers` itself is not asked to truncate a pair: it pairs
every overflowing window of one side with every window of the other, which for two long sides (two 100 KB texts)
takes gigabytes. A side beyond the prefix length is tokenized as a prefix when the split provably does not depend
on its true length (`pair_split_is_known`), else whole.

Why a prefix can be enough: the normalizers and pre-tokenizers of `tokenizers` act locally (per character, or by
regular expressions scanned left to right), so cutting a text can change only the pre-token (word) the cut falls in
(and, through a look-ahead, the one before it), and the model tokenizes each pre-token on its own. The tokens of the
words at least one whole word before the prefix's last word are therefore the whole text's (`stable_length`).
"""
from __future__ import annotations

import contextlib
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Union

from tokenizers import Tokenizer

# Texts longer than max_length * this many characters are tried as a prefix first (a token is rarely > 10).
PREFIX_CHARS_PER_TOKEN = 50
PROBE_PAIRS = (("a b c", "d e"), ("f", "g h i j"))  # for reading the pair template

Item = Union[str, tuple[str, str]]  # a text, or a (text, text_pair) pair


class PairEncoding(NamedTuple):
    """A pair's model inputs (what Triton's text_preprocessing sends on); the lengths are before truncation
    (a lower bound for a side read as a prefix)."""

    ids: list[int]
    type_ids: list[int]
    attention_mask: list[int]
    first_length: int
    second_length: int


def prefix_is_enough(encoding: Any) -> bool:
    """Whether a truncated prefix's encoding (of a single text) equals the whole text's: every kept token comes
    from a word at least one whole word before the prefix's last word. A tokenizer with no word split (every
    token of word 0) never qualifies: its long texts are tokenized whole."""
    kept = [word for word in encoding.word_ids if word is not None]
    rest = [word for piece in encoding.overflowing for word in piece.word_ids if word is not None]
    return bool(kept) and bool(rest) and max(kept) + 1 < max(rest)


def stable_length(encoding: Any) -> int:
    """How many leading tokens of a prefix's encoding (no special tokens, not truncated) are provably the whole
    text's: those of words at least one whole word before the prefix's last word (word ids never decrease)."""
    words = encoding.word_ids
    if not words or any(word is None for word in words):
        return 0
    return bisect_right(words, words[-1] - 2)


def longest_first(first: int, second: int, budget: int) -> tuple[int, int]:
    """How many tokens of each side tokenizers' longest_first truncation keeps (utils/truncation.rs,
    truncate_encodings): nothing is cut when the pair fits; else, with s the shorter side, s keeps all of itself and
    the longer side the rest, or, when s > budget / 2, both keep budget // 2 and the longer one (the second on a
    tie) budget % 2 more."""
    if first + second <= budget:
        return first, second
    swap = first > second
    shorter, longer = (second, first) if swap else (first, second)
    longer = shorter if shorter > budget else max(shorter, budget - shorter)
    if shorter + longer > budget:
        shorter = budget // 2
        longer = shorter + budget % 2
    kept = (longer, shorter) if swap else (shorter, longer)
    return min(kept[0], first), min(kept[1], second)


@dataclass(frozen=True)
class Side:
    """One side of a pair: its exact token count, or (a prefix) a lower bound of it: the stable tokens."""

    length: int
    exact: bool


def pair_split_is_known(first: Side, second: Side, budget: int) -> bool:
    """Whether longest_first keeps the same number of tokens of each side whatever the true length of a prefixed
    side, and only tokens known to be the whole side's. With one prefixed side whose stable tokens exceed the
    budget and an exact side shorter than that, the split depends on the exact side only; with two prefixed sides,
    each keeps budget // 2 and the longer one budget % 2 more: known when the budget is even."""
    prefixed = [side for side in (first, second) if not side.exact]
    if not prefixed:
        return True
    if budget <= 0 or any(side.length <= budget for side in prefixed):
        return False
    if len(prefixed) == 1:
        other = second if prefixed[0] is first else first
        return other.length < prefixed[0].length
    return budget % 2 == 0


Piece = tuple[str, int, int]  # ("special", token id, type id) or ("A" / "B", 0, type id)


@dataclass(frozen=True)
class PairTemplate:
    """The model's pair template, e.g. BERT's [CLS] A [SEP] B:1 [SEP]:1 or RoBERTa's <s> A </s> </s> B </s>."""

    pieces: tuple[Piece, ...]

    @classmethod
    def read(cls, tokenizer: Tokenizer) -> Optional["PairTemplate"]:
        """The template of `tokenizer`'s pair encodings, read from probe pairs; None when it is not one fixed
        layout of special tokens around A and B, or the tokenizer cannot encode pairs (then pairs are not served:
        the converter's parity check on pairs fails)."""
        templates = set()
        for first, second in PROBE_PAIRS:
            try:
                encoding = tokenizer.encode(first, second)
            except Exception:  # noqa: BLE001 - a tokenizer without a pair template; single texts still work
                return None
            alone = {0: tokenizer.encode(first, add_special_tokens=False).ids,
                     1: tokenizer.encode(second, add_special_tokens=False).ids}
            pieces: list[Piece] = []
            runs: dict[int, list[int]] = {0: [], 1: []}
            for token, sequence, type_id in zip(encoding.ids, encoding.sequence_ids, encoding.type_ids):
                if sequence is None:
                    pieces.append(("special", token, type_id))
                    continue
                name = "AB"[sequence]
                if not pieces or pieces[-1][0] != name:
                    pieces.append((name, 0, type_id))
                elif pieces[-1][2] != type_id:
                    return None
                runs[sequence].append(token)
            names = [piece[0] for piece in pieces if piece[0] != "special"]
            if names != ["A", "B"] or runs[0] != alone[0] or runs[1] != alone[1]:
                return None
            templates.add(tuple(pieces))
        return cls(templates.pop()) if len(templates) == 1 else None

    def fill(self, first: list[int], second: list[int]) -> tuple[list[int], list[int]]:
        """(ids, type ids) of the pair (first, second) in this template."""
        ids: list[int] = []
        type_ids: list[int] = []
        for kind, token, type_id in self.pieces:
            tokens = [token] if kind == "special" else first if kind == "A" else second
            ids.extend(tokens)
            type_ids.extend([type_id] * len(tokens))
        return ids, type_ids


class TruncatingEncoder:
    """`encode(items)`: the encodings of texts and pairs, in order (see the module's docstring)."""

    def __init__(self, tokenizer_json: str, max_length: int) -> None:
        self.tokenizer = Tokenizer.from_file(tokenizer_json)  # the one parse of tokenizer.json
        # As saved: the pad token the model was trained with (text_preprocessing pads each request itself).
        self.saved_padding = self.tokenizer.padding
        # tokenizer.json saved by transformers may carry a fixed padding length: never trust it.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.template = PairTemplate.read(self.tokenizer)
        self.max_length = max_length
        self.tokenizer.enable_truncation(max_length=max_length)  # strategy longest_first, as transformers
        self.pair_budget = max_length - self.tokenizer.num_special_tokens_to_add(True)
        self.prefix_chars = max_length * PREFIX_CHARS_PER_TOKEN
        self.encode_batch = self.tokenizer.encode_batch_fast  # no character offsets: faster

    @contextlib.contextmanager
    def _untruncated(self) -> Iterator[Any]:
        """The tokenizer without truncation, for pair sides alone (encoded without special tokens); truncation to
        max_length is back afterwards (two setters: no copy of the tokenizer is parsed for this)."""
        self.tokenizer.no_truncation()
        try:
            yield self.tokenizer
        finally:
            self.tokenizer.enable_truncation(max_length=self.max_length)

    def encode(self, items: Sequence[Item]) -> list[Any]:
        """Encodings (with ids, type_ids, attention_mask) of `items`, in order."""
        singles = [row for row, item in enumerate(items) if isinstance(item, str)]
        pairs = [row for row, item in enumerate(items) if not isinstance(item, str)]
        if not pairs:
            return self.encode_texts(list(items)) if items else []
        if self.template is None:  # make_triton_image.sh --text-pair refuses such a model (utils/parity.py)
            raise ValueError("this tokenizer's pair template could not be read: text pairs are not served")
        known = dict(zip(singles, self.encode_texts([str(items[row]) for row in singles]) if singles else []))
        known.update(zip(pairs, self.encode_pairs([items[row] for row in pairs])))  # type: ignore[misc]
        return [known[row] for row in range(len(items))]

    # ------------------------------------------------------------------------------------------------ texts

    def encode_texts(self, texts: list[str]) -> list[Any]:
        """One batched tokenizer call, plus one for the prefixes of texts far beyond max_length if any."""
        long_rows = [row for row, text in enumerate(texts) if len(text) > self.prefix_chars]
        if not long_rows:
            return self.encode_batch(texts)
        # encode_batch (not _fast): prefix_is_enough needs the word ids.
        prefixes = self.tokenizer.encode_batch([texts[row][:self.prefix_chars] for row in long_rows])
        known = {row: enc for row, enc in zip(long_rows, prefixes) if prefix_is_enough(enc)}
        rest = [row for row in range(len(texts)) if row not in known]
        for row, encoding in zip(rest, self.encode_batch([texts[row] for row in rest]) if rest else []):
            known[row] = encoding
        return [known[row] for row in range(len(texts))]

    # ------------------------------------------------------------------------------------------------ pairs

    def encode_pairs(self, pairs: list[tuple[str, str]]) -> list[PairEncoding]:
        """Every side alone (long ones as prefixes), truncation computed, kept tokens put into the template."""
        assert self.template is not None
        texts = [text for pair in pairs for text in pair]
        alone = self._sides_alone(texts)
        whole = []  # prefixed sides of the pairs whose split the prefixes do not prove: tokenized whole
        for index in range(0, len(texts), 2):
            first, second = (self._side(texts[i], alone[i]) for i in (index, index + 1))
            if not pair_split_is_known(first, second, self.pair_budget):
                whole += [i for i, side in ((index, first), (index + 1, second)) if not side.exact]
        if whole:
            with self._untruncated() as sides:
                for i, encoding in zip(whole, sides.encode_batch_fast([texts[i] for i in whole],
                                                                      add_special_tokens=False)):
                    alone[i] = encoding
        encodings = []
        for index in range(0, len(texts), 2):
            first_ids, second_ids = alone[index].ids, alone[index + 1].ids
            keep = longest_first(len(first_ids), len(second_ids), self.pair_budget)
            ids, type_ids = self.template.fill(first_ids[:keep[0]], second_ids[:keep[1]])
            encodings.append(PairEncoding(ids, type_ids, [1] * len(ids), len(first_ids), len(second_ids)))
        return encodings

    def _sides_alone(self, texts: list[str]) -> list[Any]:
        """Each text alone, a long one as its prefix (with word ids: encode_batch, not _fast)."""
        long_rows = [row for row, text in enumerate(texts) if len(text) > self.prefix_chars]
        short_rows = [row for row in range(len(texts)) if len(texts[row]) <= self.prefix_chars]
        with self._untruncated() as sides:
            encodings = dict(zip(
                long_rows, sides.encode_batch([texts[row][:self.prefix_chars] for row in long_rows],
                                              add_special_tokens=False) if long_rows else []))
            encodings.update(zip(short_rows, sides.encode_batch_fast([texts[row] for row in short_rows],
                                                                     add_special_tokens=False)))
        return [encodings[row] for row in range(len(texts))]

    def _side(self, text: str, encoding: Any) -> Side:
        if len(text) <= self.prefix_chars:
            return Side(len(encoding.ids), exact=True)
        return Side(stable_length(encoding), exact=False)
