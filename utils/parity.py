"""Parity of an exported classifier with its PyTorch original, on probe texts, the way the server runs it.

Reference: the original tokenizer and the PyTorch model, one text at a time (no padding), truncated to the
maximum sequence length. Candidate: the saved tokenizer.json (what Triton's text_preprocessing loads), batches
padded to their longest text with the pad id, and ONNX Runtime. Both the token ids and the logits must agree:
max |logit diff| <= tolerance and no argmax differs.

Text pairs (`check_pair_parity`) are probed the same way: `tokenizer(text, text_pair, truncation=True)` against
tokenizer.json's pair encoding (template, longest_first truncation, token_type_ids), with pairs whose first, second
and both sides exceed the maximum length. A model whose pairs disagree still serves single texts; the report
records why its pairs can't be served.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np

LOGGER = logging.getLogger(__name__)
SERVED_ENCODER = Path(__file__).resolve().parent.parent / "model_repository" / "text_preprocessing" / "1" / \
    "truncating_encoder.py"

TOLERANCE = 1e-4
BATCH_SIZE = 4
SHORT_PROBES = (
    "",
    "ok",
    "помогите мне восстановить пароль",
    "Where is my order? I paid for it last week.",
    "спасибо 🙂🚀 thanks!",
    "🙂",
    "Mixed язык text 123, с цифрами 4567 & symbols: #@%!?",
    "  several   spaces\nand a new line\tand a tab  ",
    "Café naïve résumé Ünïcödé",
    "日本語のテキストと中文文本",
)
LONG_UNIT = "Это длинный текст для проверки усечения, and this is a long English text to check truncation. "
SHORT_PAIRS = (
    ("where is my order?", "I paid for it last week"),
    ("помогите мне", "не могу восстановить пароль"),
    ("", "ok"),
    ("ok", ""),
    ("", ""),
    ("спасибо 🙂🚀 thanks!", "Café naïve résumé Ünïcödé"),
    ("日本語のテキスト", "Mixed язык text 123, с цифрами 4567 & symbols: #@%!?"),
)
Probe = Union[str, tuple[str, str]]  # a text, or a (text, text_pair) pair


class ParityError(Exception):
    """ONNX Runtime (or the saved tokenizer.json) disagrees with PyTorch; the message carries the figures."""


@dataclass(frozen=True)
class ParityFigures:
    texts: int
    batch_size: int
    tolerance: float
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    argmax_mismatches: int
    tokenizer_mismatches: int
    longest_sequence: int
    passed: bool
    probes: str = "texts"  # or "text pairs"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.texts} probe {self.probes} in batches of {self.batch_size} (longest {self.longest_sequence} "
                f"tokens): "
                f"max |logit diff| {self.max_abs_logit_diff:.3e} (tolerance {self.tolerance:.0e}), mean "
                f"{self.mean_abs_logit_diff:.3e}, argmax mismatches {self.argmax_mismatches}, "
                f"tokenizer mismatches {self.tokenizer_mismatches}")


def probe_texts(token_count: Callable[[str], int], max_length: int) -> list[str]:
    """Short, Russian, English, emoji, empty, odd whitespace and one text longer than max_length tokens,
    ordered so every batch mixes the long text's padding with short ones."""
    long_text = LONG_UNIT
    while token_count(long_text) <= max_length + 8:
        long_text += long_text
    texts = list(SHORT_PROBES)
    texts.insert(1, long_text)
    return texts


def probe_pairs(token_count: Callable[[str], int], max_length: int) -> list[tuple[str, str]]:
    """Short pairs, and pairs whose first side, second side or both exceed max_length tokens, with a second side of
    a third of max_length (truncation splits it differently), mixed so every batch holds long and short pairs."""
    long_text = LONG_UNIT
    while token_count(long_text) <= max_length + 8:
        long_text += long_text
    medium = LONG_UNIT
    while token_count(medium) < max_length // 3:
        medium += " " + LONG_UNIT
    long_pairs = [(long_text, "short second side"), ("short first side", long_text), (long_text, long_text),
                  (long_text, medium), (medium, long_text + " and a bit more")]
    pairs = list(SHORT_PAIRS)
    for index, pair in enumerate(long_pairs):
        pairs.insert(index * 2 + 1, pair)
    return pairs


@dataclass(frozen=True)
class Encoded:
    """Per-text (or per-pair) token arrays (no padding) keyed by input name."""

    text: Probe
    arrays: dict[str, np.ndarray]

    @property
    def length(self) -> int:
        return len(self.arrays["input_ids"])


def encode_reference(tokenizer: Any, texts: Sequence[Probe], max_length: int,
                     input_names: Sequence[str]) -> list[Encoded]:
    """The original transformers tokenizer, as a user's PyTorch code calls it (`tokenizer(text, text_pair)`)."""
    rows = []
    for text in texts:
        encoding = tokenizer(*((text,) if isinstance(text, str) else text), truncation=True, max_length=max_length)
        arrays = {name: np.asarray(encoding[name] if name in encoding else [0] * len(encoding["input_ids"]),
                                   dtype=np.int64) for name in input_names}
        rows.append(Encoded(text, arrays))
    return rows


def served_encoder(tokenizer_json: Path, max_length: int) -> Any:
    """Triton's text_preprocessing tokenization itself (model_repository/text_preprocessing/1/truncating_encoder.py,
    which needs only `tokenizers`): the parity check proves the code that serves."""
    import importlib.util
    import sys

    name = "truncating_encoder"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SERVED_ENCODER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name].TruncatingEncoder(str(tokenizer_json), max_length)


def encode_served(tokenizer_json: Path, texts: Sequence[Probe], max_length: int,
                  input_names: Sequence[str]) -> list[Encoded]:
    """The saved tokenizer.json encoded as Triton's text_preprocessing encodes it (a pair whose second text is
    empty is the first text alone, as transformers' `tokenizer(text, "")` encodes it; text_preprocessing's
    model.py does the same)."""
    inputs = [text if isinstance(text, str) or text[1] else text[0] for text in texts]
    rows = []
    for text, encoding in zip(texts, served_encoder(tokenizer_json, max_length).encode(inputs)):
        fields = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask,
                  "token_type_ids": encoding.type_ids}
        rows.append(Encoded(text, {name: np.asarray(fields[name], dtype=np.int64) for name in input_names}))
    return rows


def pad_batch(rows: Sequence[Encoded], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad to the longest row: pad_id for input_ids, 0 elsewhere (attention_mask 0 marks padding)."""
    length = max(row.length for row in rows)
    batch = {}
    for name in rows[0].arrays:
        fill = pad_id if name == "input_ids" else 0
        array = np.full((len(rows), length), fill, dtype=np.int64)
        for index, row in enumerate(rows):
            array[index, :row.length] = row.arrays[name]
        batch[name] = array
    return batch


def torch_logits(model: Any, rows: Sequence[Encoded]) -> np.ndarray:
    import torch

    outputs = []
    with torch.no_grad():
        for row in rows:
            tensors = {name: torch.from_numpy(array).unsqueeze(0) for name, array in row.arrays.items()}
            outputs.append(model(**tensors).logits[0].float().numpy())
    return np.stack(outputs)


def onnx_logits(onnx_path: Path, rows: Sequence[Encoded], pad_id: int, batch_size: int) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = [session.run(["logits"], pad_batch(rows[start:start + batch_size], pad_id))[0]
               for start in range(0, len(rows), batch_size)]
    return np.concatenate(outputs).astype(np.float64)


def _short(text: Probe, limit: int = 40) -> str:
    if not isinstance(text, str):
        return f"({_short(text[0], limit // 2)}, {_short(text[1], limit // 2)})"
    return repr(text if len(text) <= limit else text[:limit] + "...")


def compare_tokens(reference: Sequence[Encoded], served: Sequence[Encoded]) -> list[str]:
    """One line per probe text whose served token arrays differ from the reference ones."""
    problems = []
    for ref, got in zip(reference, served):
        for name, array in ref.arrays.items():
            if not np.array_equal(array, got.arrays[name]):
                problems.append(f"{_short(ref.text)}: {name} {got.arrays[name][:12].tolist()}... instead of "
                                f"{array[:12].tolist()}...")
                break
    return problems


def check_parity(model: Any, tokenizer: Any, onnx_path: Path, tokenizer_json: Path, max_length: int,
                 input_names: Sequence[str], pad_id: int, batch_size: int = BATCH_SIZE,
                 tolerance: float = TOLERANCE, pairs: bool = False) -> ParityFigures:
    """Returns the figures; raises ParityError (carrying them) when the served path disagrees with PyTorch.
    `pairs`: probe text pairs (probe_pairs) instead of single texts."""
    def token_count(text: str) -> int:
        return len(tokenizer(text, truncation=True, max_length=max_length + 16)["input_ids"])

    texts: Sequence[Probe] = probe_pairs(token_count, max_length) if pairs else probe_texts(token_count, max_length)
    what = "probe text pair(s)" if pairs else "probe text(s)"
    reference = encode_reference(tokenizer, texts, max_length, input_names)
    served = encode_served(tokenizer_json, texts, max_length, input_names)
    token_problems = compare_tokens(reference, served)
    LOGGER.info("Parity: running PyTorch and ONNX Runtime on %d %s", len(texts), what.replace("(s)", "s"))
    expected = torch_logits(model, reference).astype(np.float64)
    actual = onnx_logits(onnx_path, served, pad_id, batch_size)
    diff = np.abs(expected - actual)
    mismatched = np.flatnonzero(expected.argmax(axis=1) != actual.argmax(axis=1))
    figures = ParityFigures(
        texts=len(texts), batch_size=batch_size, tolerance=tolerance, max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()), argmax_mismatches=int(mismatched.size),
        tokenizer_mismatches=len(token_problems), longest_sequence=max(row.length for row in served),
        passed=bool(diff.max() <= tolerance and mismatched.size == 0 and not token_problems),
        probes="text pairs" if pairs else "texts",
    )
    LOGGER.info("Parity: %s", figures.summary())
    if token_problems:
        raise ParityError(f"parity check failed: the saved tokenizer.json (what Triton uses) encodes "
                          f"{len(token_problems)} {what} differently from the original tokenizer, e.g. "
                          f"{token_problems[0]}; save a fast tokenizer (tokenizer.json) with transformers and pass "
                          f"its directory with --tokenizer. Figures: {figures.summary()}")
    if not figures.passed:
        worst = texts[int(diff.max(axis=1).argmax())]
        raise ParityError(f"parity check failed: ONNX Runtime differs from PyTorch (worst text {_short(worst)}, "
                          f"logits up to {np.abs(expected).max():.3g} in magnitude); {figures.summary()}. The export "
                          "does not behave like the original: try another --opset, or report the architecture")
    return figures


def check_pair_parity(model: Any, tokenizer: Any, onnx_path: Path, tokenizer_json: Path, max_length: int,
                      input_names: Sequence[str], pad_id: int) -> dict[str, Any]:
    """check_parity on text pairs, for the report: the figures with `passed`, or `passed: false` and the `reason`
    (a tokenizer that cannot encode pairs, or pairs that disagree). Single texts may still be served, so a failure
    is a warning, not an error."""
    try:
        tokenizer(*SHORT_PAIRS[0], truncation=True, max_length=max_length)
        template = served_encoder(tokenizer_json, max_length).template
    except Exception as err:  # transformers and tokenizers raise many types for pairs they cannot encode
        return _pairs_refused(f"the tokenizer cannot encode text pairs ({type(err).__name__}: {err})")
    if template is None:
        return _pairs_refused("tokenizer.json's pair encoding is not one fixed template of special tokens around "
                              "the two texts, which Triton's text_preprocessing needs to truncate pairs")
    try:
        return check_parity(model, tokenizer, onnx_path, tokenizer_json, max_length, input_names, pad_id,
                            pairs=True).as_dict()
    except ParityError as err:
        return _pairs_refused(str(err))


def _pairs_refused(reason: str) -> dict[str, Any]:
    LOGGER.warning("Text pairs can't be served (make_triton_image.sh --text-pair refuses this model): %s", reason)
    return {"passed": False, "reason": reason}
