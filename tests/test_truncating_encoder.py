"""text_preprocessing's tokenization (model_repository/text_preprocessing/1/truncating_encoder.py), without a
server: for WordPiece, byte-level BPE and SentencePiece tokenizers, every long text and every text pair with long
sides gets exactly the tokens of tokenizing it whole (what the Hugging Face fast tokenizer does with
truncation=True), whether the prefix shortcut was taken or not, and the shortcut is taken where it is provable."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import ROOT
from tiny_models import BUILDERS

VERSION_DIR = ROOT / "model_repository" / "text_preprocessing" / "1"
MAX_LENGTH = 64  # the tiny models' limit; pair budgets: BERT 64 - 3 = 61 (odd), RoBERTa 64 - 4 = 60 (even)
NORMAL = ["where is my order", "помогите мне", "thank you very much", ""]


def long_of(unit: str, chars: int = 20_000) -> str:
    """Far beyond the prefix that the encoder tries (64 tokens * 50 characters here)."""
    return unit * (chars // len(unit) + 1)


LONG_TEXTS = {
    "words": long_of("I want a refund for this item "),
    "mixed_scripts": long_of("where is мой заказ 我的订单 أين طلبي 🙂 "),
    "one_word": long_of("x"),
    "long_word_then_words": "y" * 5000 + long_of(" where is my order"),
    "words_then_long_word": "hello " * 600 + "z" * 20_000,
    "48_char_words": long_of("q" * 48 + " "),
    "whitespace_runs": long_of("a" + " " * 997 + "b\n"),
    "punctuation": long_of("!?.,;:"),
    "emoji": long_of("🙂👍🏽 "),
}
# Pair sides just beyond the prefix the encoder tries (3,200 characters here), short enough that the reference (the
# tokenizer truncating the pair whole) stays cheap: tokenizers pairs every overflowing window of one side with
# every window of the other, which is why the encoder never asks it to (see test_two_1mb_sides_stay_cheap).
LONG_SIDES = {name: text[:3400] for name, text in LONG_TEXTS.items()}
# Other sides: short, about the pair budget, and (in characters) under the prefix length but with more tokens than
# a long side's stable prefix proves.
OTHER_SIDES = {"short": "where is my order", "medium": "thank you " * 40, "dense": "! " * 1000}


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def encoding() -> ModuleType:
    return load("truncating_encoder", VERSION_DIR / "truncating_encoder.py")


@pytest.fixture(scope="module", params=["bert", "roberta", "xlm_roberta", "albert", "deberta_v2"])
def tokenizer_json(request, tmp_path_factory) -> Path:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / "hf") / "tokenizer.json"


def whole(tokenizer_json: Path):
    """The reference: the same tokenizer.json, every text whole, truncated as transformers truncates."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    return tokenizer


def test_long_texts_get_the_whole_texts_tokens(encoding: ModuleType, tokenizer_json: Path) -> None:
    encoder = encoding.TruncatingEncoder(str(tokenizer_json), MAX_LENGTH)
    texts = list(LONG_TEXTS.values()) + NORMAL
    reference = whole(tokenizer_json)
    for name, text, encoded in zip([*LONG_TEXTS, *NORMAL], texts, encoder.encode(texts)):
        assert encoded.ids == reference.encode(text).ids, name
    shortcut = [name for name, text in LONG_TEXTS.items()
                if encoding.prefix_is_enough(encoder.tokenizer.encode(text[:encoder.prefix_chars]))]
    assert "words" in shortcut and "one_word" not in shortcut, shortcut  # both paths were taken


def test_long_pairs_get_the_whole_pairs_tokens(encoding: ModuleType, tokenizer_json: Path) -> None:
    encoder = encoding.TruncatingEncoder(str(tokenizer_json), MAX_LENGTH)
    assert encoder.template is not None
    pairs = {"normal": (NORMAL[0], NORMAL[1]), "empty_first": ("", NORMAL[1]), "medium+medium":
             (OTHER_SIDES["medium"], OTHER_SIDES["medium"] + " ok"), "short+medium": (NORMAL[2], OTHER_SIDES["medium"])}
    combinations = [(name, other) for name in LONG_SIDES for other in ("short", "medium")]
    combinations += [("words", "dense"), ("one_word", "dense")]  # the rest: few, the reference is quadratic
    combinations += [(name, "words") for name in ("words", "one_word", "emoji")]
    for name, other_name in combinations:
        text, other = LONG_SIDES[name], OTHER_SIDES.get(other_name, LONG_SIDES.get(other_name))
        pairs[f"{name}+{other_name}"] = (text, other)
        pairs[f"{other_name}+{name}"] = (other, text)
    reference = whole(tokenizer_json)
    for name, encoded in zip(pairs, encoder.encode(list(pairs.values()))):
        expected = reference.encode(*pairs[name])
        assert (encoded.ids, encoded.type_ids, encoded.attention_mask) == \
               (expected.ids, expected.type_ids, expected.attention_mask), name

    def shortcut(pair: tuple[str, str]) -> bool:  # the split was proven from the prefixes
        sides = [encoder._side(text, alone) for text, alone in zip(pair, encoder._sides_alone(list(pair)))]
        return not all(side.exact for side in sides) and encoding.pair_split_is_known(*sides, encoder.pair_budget)

    taken = {name for name, pair in pairs.items() if shortcut(pair)}
    assert {"words+short", "short+words", "words+medium"} <= taken, taken  # one long side: provable
    assert "one_word+short" not in taken  # no word boundary in the prefix: tokenized whole
    assert ("words+words" in taken) == (encoder.pair_budget % 2 == 0), (encoder.pair_budget, taken)


def test_two_1mb_sides_stay_cheap(encoding: ModuleType, tokenizer_json: Path) -> None:
    """Tokenizers truncating such a pair itself would pair each of ~10^4 overflowing windows of one side with each
    of the other's (gigabytes); the encoder keeps memory linear and answers within the budget."""
    import resource

    encoder = encoding.TruncatingEncoder(str(tokenizer_json), MAX_LENGTH)
    one_mb = long_of("🙂 where is мой заказ ", 1_000_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    [encoded] = encoder.encode([(one_mb, one_mb[1:])])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(encoded.ids) == MAX_LENGTH and encoded.first_length > MAX_LENGTH, encoded.first_length
    assert grown_mb < 500, f"peak memory grew by {grown_mb:.0f} MB"


def test_longest_first_is_tokenizers_own(encoding: ModuleType, tokenizer_json: Path) -> None:
    """The split the encoder computes equals the tokenizer's own truncation for every pair of lengths around the
    budget (no truncation, only the longer side cut, both cut, ties, odd and even budgets)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    words = tokenizer.encode("where is my order " * 20, add_special_tokens=False)
    unit = "where is my order "
    assert len(tokenizer.encode(unit, add_special_tokens=False).ids) * 20 == len(words.ids)
    per_unit = len(words.ids) // 20
    for max_length in (MAX_LENGTH, MAX_LENGTH - 1):
        tokenizer.enable_truncation(max_length=max_length)
        budget = max_length - tokenizer.num_special_tokens_to_add(True)
        for first_units in (0, 1, 3, 5, 9, 14):
            for second_units in (0, 1, 3, 5, 9, 14):
                first, second = unit * first_units, unit * second_units
                pair = tokenizer.encode(first, second)
                kept = [pair.sequence_ids.count(0), pair.sequence_ids.count(1)]
                assert list(encoding.longest_first(first_units * per_unit, second_units * per_unit, budget)) == kept


@pytest.mark.parametrize("first, second, budget, known", [
    ((5, True), (9, True), 61, True),  # both whole: nothing to prove
    ((3000, False), (10, True), 61, True),  # one long side, the other shorter: the split is the other's
    ((3000, False), (500, True), 61, True),
    ((10, True), (3000, False), 61, True),
    ((3000, False), (3000, True), 61, False),  # the whole side may be the longer one
    ((3000, False), (4000, True), 61, False),
    ((60, False), (10, True), 61, False),  # too few provable tokens to cover the budget
    ((3000, False), (2000, False), 60, True),  # both long, even budget: M / 2 each whatever their order
    ((3000, False), (2000, False), 61, False),  # odd budget: the extra token goes to the unknown longer side
])
def test_pair_split_is_known(encoding: ModuleType, first, second, budget: int, known: bool) -> None:
    assert encoding.pair_split_is_known(encoding.Side(*first), encoding.Side(*second), budget) is known


@pytest.fixture(scope="module")
def python_backend_utils() -> Path:
    """Triton's own triton_python_backend_utils.py (from the nvidia-pytriton wheel), for importing model.py."""
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver" / "backends" / "python"


def test_model_py_encodes_with_the_encoder(tokenizer_json: Path, tmp_path: Path, python_backend_utils: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """model.py as Triton loads it (its version directory on sys.path): its encode is the encoder's."""
    tokenizer_dir = tmp_path / "repo" / "1" / "tokenizer"
    tokenizer_dir.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_json.parent / name).is_file():
            (tokenizer_dir / name).write_bytes((tokenizer_json.parent / name).read_bytes())
    monkeypatch.syspath_prepend(str(python_backend_utils))
    monkeypatch.syspath_prepend(str(VERSION_DIR))
    monkeypatch.syspath_prepend(str(ROOT / "model_repository"))  # tritoned_metrics.py, beside model.py once built
    module = load(f"text_preprocessing_{tokenizer_json.parent.parent.name}", VERSION_DIR / "model.py")
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps({
        "parameters": {"max_sequence_length": {"string_value": str(MAX_LENGTH)}},
        "input": [{"name": "text_input"}, {"name": "text_pair"}],
        "output": [{"name": "input_ids"}, {"name": "attention_mask"}]}),
        "model_repository": str(tmp_path / "repo"), "model_version": "1"})
    assert model.with_text_pair
    items = [LONG_TEXTS["words"], (LONG_SIDES["words"], NORMAL[0]), NORMAL[1]]
    reference = whole(tokenizer_json)
    expected = [reference.encode(items[0]).ids, reference.encode(*items[1]).ids, reference.encode(items[2]).ids]
    assert [encoded.ids for encoded in model.encode(items)] == expected
