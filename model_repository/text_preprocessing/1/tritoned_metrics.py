"""text_preprocessing's tritoned_* metrics, served by Triton on its metrics port (8002) beside its own nv_* ones.

- tritoned_texts_tokenized_total{model}         texts tokenized (a text pair counts as one text)
- tritoned_texts_truncated_total{model}         texts cut at the model's maximum length (a pair: either side)
- tritoned_text_length_tokens{model}            histogram: tokens per text before truncation, special tokens included
- tritoned_texts_rejected_total{model,reason}   texts of requests refused, by reason (REJECT_REASONS, then "other")

`model` is the ensemble's name. make_triton_image.sh renders two config parameters: `model_metrics` ("true", or
"false" with --no-model-metrics) and `model_name`. Off (or without the parameter) no metric family is created and
`record` does nothing. Requests with the parameter tritoned_probe=true (the gateway's health probe) are not counted.

Cost: every update of a Python-backend metric is a round trip to the server (measured: ~18 us, of which ~16 us
CPU in the stub and the server together): a batch costs one call per counter that changed and one `observe` per text
(a histogram has no weighted observe). Recording never fails a batch: an error is logged, the answers go out.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import triton_python_backend_utils as pb_utils

LOGGER = logging.getLogger("text_preprocessing.metrics")

# reason label -> a phrase of the error messages it stands for; the first match wins, no match is "other", so the
# label values stay these four whatever a message says.
REJECT_REASONS = {
    "invalid_utf8": "not valid UTF-8",        # text_input[i] (or text_pair[i]) is not valid UTF-8 (...)
    "bad_pair": "text_pair",                  # text_pair's rows do not match text_input's
    "tokenizer_error": "tokenizer failed",    # the tokenizer raised on this request's texts
}
OTHER_REASON = "other"
# A request with this parameter set to true is not counted: the gateway's end-to-end health probe sends it, so that
# the probe texts (one every few seconds on every replica) do not show up as traffic.
PROBE_PARAMETER = "tritoned_probe"
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # plus the model's max length, and +Inf


class Disabled:
    """What `create` returns when metrics are off: records nothing."""

    def record(self, requests: Sequence[Any], responses: Sequence[Any], encodings: Sequence[Any] | None) -> None:
        pass


def is_probe(request: Any) -> bool:
    parameters = request.parameters()  # a JSON object; the ensemble passes its request's parameters on
    return PROBE_PARAMETER in parameters and json.loads(parameters).get(PROBE_PARAMETER) is True


def reason_of(message: str) -> str:
    return next((reason for reason, phrase in REJECT_REASONS.items() if phrase in message), OTHER_REASON)


def settings(config: dict[str, Any]) -> tuple[bool, str]:
    """(metrics on, the `model` label) from the config parameters make_triton_image.sh renders."""
    parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    if parameters.get("model_metrics") == "true" and not parameters.get("model_name"):
        raise ValueError(f"{config.get('name')}: model_metrics is on but model_name (the metrics' model label) is "
                         "missing; assemble the repository with make_triton_image.sh")
    return parameters.get("model_metrics") == "true", parameters.get("model_name", "")


def create(config: dict[str, Any], tokenizer: Any, max_length: int,
           char_limit: int) -> "TokenizationMetrics | Disabled":
    """The metrics of the model whose parsed config this is. `char_limit`: the most characters of each side of a
    pair that are re-tokenized to count a truncated pair's tokens (see `tokens_before_truncation`)."""
    enabled, model = settings(config)
    return TokenizationMetrics(model, tokenizer, max_length, char_limit) if enabled else Disabled()


def tokens_before_truncation(encoding: Any, tokenizer: Any, single_specials: int, pair: tuple[str, str] | None,
                             char_limit: int) -> int:
    """How many tokens the tokenizer would give without truncation, special tokens included.

    A single text: the kept tokens plus those of every overflowing piece less the special tokens each piece gets.
    A pair: its overflowing pieces are every combination of the two sides' pieces, which does not tell the sides'
    lengths apart, so each side of a truncated pair (its first `char_limit` characters) is tokenized again alone,
    without special tokens. A text longer than the prefix text_preprocessing tokenizes for a long text is counted
    as that prefix: a lower bound, far above the max length.
    """
    if not encoding.overflowing:
        return len(encoding.ids)
    if encoding.n_sequences < 2 or pair is None:
        return len(encoding.ids) + sum(len(piece.ids) - single_specials for piece in encoding.overflowing)
    sides = tokenizer.encode_batch([side[:char_limit] for side in pair], add_special_tokens=False)
    content = sum(len(side.ids) + sum(len(piece.ids) for piece in side.overflowing) for side in sides)
    specials = tokenizer.post_processor.num_special_tokens_to_add(True) if tokenizer.post_processor else 0
    return content + specials


def _texts(request: Any, name: str) -> list[str] | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in values]


class TokenizationMetrics:
    def __init__(self, model: str, tokenizer: Any, max_length: int, char_limit: int) -> None:
        counter, histogram = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.HISTOGRAM
        labels = {"model": model}
        self._families = [  # a family lives as long as its Python object
            pb_utils.MetricFamily("tritoned_texts_tokenized_total",
                                  "Texts tokenized (a text pair counts as one text).", counter),
            pb_utils.MetricFamily("tritoned_texts_truncated_total",
                                  "Texts cut at the model's maximum length (a pair: either side cut).", counter),
            pb_utils.MetricFamily("tritoned_text_length_tokens",
                                  "Tokens per text before truncation, special tokens included (a pair: both sides).",
                                  histogram),
            pb_utils.MetricFamily("tritoned_texts_rejected_total",
                                  "Texts of requests refused before tokenization, by reason "
                                  f"({', '.join([*REJECT_REASONS, OTHER_REASON])}).", counter),
        ]
        tokenized, truncated, lengths, rejected = self._families
        self._tokenized = tokenized.Metric(labels=labels)
        self._truncated = truncated.Metric(labels=labels)
        self._lengths = lengths.Metric(labels=labels, buckets=[float(b) for b in sorted({*LENGTH_BUCKETS, max_length})])
        # Every series exists from the start (at 0): rate() and the dashboard see it before the first rejection.
        self._rejected = {reason: rejected.Metric(labels={**labels, "reason": reason})
                          for reason in [*REJECT_REASONS, OTHER_REASON]}
        self._tokenizer = tokenizer
        self._single_specials = tokenizer.post_processor.num_special_tokens_to_add(False) \
            if tokenizer.post_processor else 0
        self._char_limit = char_limit
        self._failures = 0

    def record(self, requests: Sequence[Any], responses: Sequence[Any], encodings: Sequence[Any] | None) -> None:
        """Counts one `execute` call: `responses[i]` answers `requests[i]`; `encodings` are those of the texts of
        the requests answered without error, in order (None: unknown, only texts and rejections are counted)."""
        try:
            self._record(requests, responses, encodings)
        except Exception:  # noqa: BLE001 - metrics must never cost a client its answer
            self._failures += 1
            if self._failures == 1:
                LOGGER.exception("recording metrics failed (logged once; the answers are not affected)")

    def _record(self, requests: Sequence[Any], responses: Sequence[Any], encodings: Sequence[Any] | None) -> None:
        tokenized = truncated = 0
        rejected: dict[str, int] = {}
        lengths: list[int] = []
        start = 0
        for request, response in zip(requests, responses):
            rows = int(pb_utils.get_input_tensor_by_name(request, "text_input").shape()[0])
            if is_probe(request):
                start += 0 if response.has_error() else rows
                continue
            if response.has_error():
                reason = reason_of(response.error().message())
                rejected[reason] = rejected.get(reason, 0) + rows
                continue
            tokenized += rows
            if encodings is None:
                continue
            pairs = None
            for row, encoding in enumerate(encodings[start:start + rows]):
                if encoding.overflowing:
                    truncated += 1
                    if encoding.n_sequences > 1 and pairs is None:
                        pairs = list(zip(_texts(request, "text_input") or [], _texts(request, "text_pair") or []))
                    pair = pairs[row] if pairs else None
                    lengths.append(tokens_before_truncation(encoding, self._tokenizer, self._single_specials, pair,
                                                            self._char_limit))
                else:
                    lengths.append(len(encoding.ids))
            start += rows
        if tokenized:
            self._tokenized.increment(float(tokenized))
        if truncated:
            self._truncated.increment(float(truncated))
        for length in lengths:
            self._lengths.observe(float(length))
        for reason, count in rejected.items():
            self._rejected[reason].increment(float(count))
