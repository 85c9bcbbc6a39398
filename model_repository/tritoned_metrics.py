"""The classifier's tritoned_* metrics, served by Triton on its metrics port (8002) beside its own nv_* ones.

text_preprocessing records (TokenizationMetrics):
- tritoned_texts_tokenized_total{model}          texts tokenized (a text pair counts as one text)
- tritoned_texts_truncated_total{model}          texts cut at the model's maximum length (a pair: either side)
- tritoned_text_length_tokens{model}             histogram: tokens per text before truncation, special tokens included
- tritoned_texts_rejected_total{model,reason}    texts of requests refused, by reason (REJECT_REASONS, then "other")
post_processing records (PredictionMetrics):
- tritoned_label_predictions_total{model,label}  texts answered with this label; a multi-label model counts every
                                                 label it applies (a text may count for several labels, or none)
- tritoned_top_score{model,label}                histogram: the score of each answered text's top label (`label` /
                                                 `score` of the answer: a probability, or a regression head's value)

`model` is the ensemble's name, `label` an id2label name: the series are bounded by the number of labels. Only texts
answered or refused count: not a request that failed for non-finite logits, nor the gateway's health probe (requests
with the probe parameter set to true). make_triton_image.sh renders three config parameters: `model_metrics` ("true",
or "false" with --no-model-metrics), `model_name` and `probe_parameter` (the name of the gateway's probe parameter,
gateway/probe.py's PROBE_PARAMETER: its one home); off (or without the parameter) no metric family is created and
recording does nothing. This one file serves both models: make_triton_image.sh puts a copy beside each model.py.

Cost: a Python-backend metric update is a round trip to the server (~16 us of CPU idle, ~30 us in the stub alone on
a loaded machine), so serving never waits for one: `record` only adds to pending counts, and a thread (Sender) sends
them every FLUSH_INTERVAL_S: one increment per counter that changed, and one observe per histogram value (the API
has no weighted observe). A failure to send is logged once; it never reaches a client.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from collections import Counter
from typing import Any, Sequence

import triton_python_backend_utils as pb_utils

LOGGER = logging.getLogger("tritoned_metrics")
FLUSH_INTERVAL_S = 1.0
MAX_PENDING_OBSERVATIONS = 100_000  # while the server takes no updates at all; beyond, values are dropped (logged)
# reason label -> a phrase of the error messages it stands for; the first match wins, no match is "other", so the
# label values stay these four whatever a message says.
REJECT_REASONS = {
    "invalid_utf8": "not valid UTF-8",        # text_input[i] (or text_pair[i]) is not valid UTF-8 (...)
    "bad_pair": "text_pair",                  # text_pair's rows do not match text_input's
    "tokenizer_error": "tokenizer failed",    # the tokenizer raised on this request's texts
}
OTHER_REASON = "other"
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # plus the model's max length, and +Inf
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # and +Inf


# ------------------------------------------------------------------------------------------------ configuration

def settings(config: dict[str, Any]) -> tuple[bool, str, str]:
    """(metrics on, the `model` label, the probe parameter) from the config parameters make_triton_image.sh renders.
    A request with the probe parameter set to true is not counted: the gateway's end-to-end health probe sends it,
    so that the probe texts (one every few seconds on every replica) do not show up as traffic."""
    parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    enabled = parameters.get("model_metrics") == "true"
    for key, what in (("model_name", "the metrics' model label"), ("probe_parameter", "the gateway's probe marker")):
        if enabled and not parameters.get(key):
            raise ValueError(f"{config.get('name')}: model_metrics is on but {key} ({what}) is missing; assemble the "
                             "repository with make_triton_image.sh")
    return enabled, parameters.get("model_name", ""), parameters.get("probe_parameter", "")


class Disabled:
    """What the factories return when metrics are off: records nothing, starts nothing."""

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def tokenization_metrics(config: dict[str, Any], tokenizer: Any, max_length: int) -> "TokenizationMetrics | Disabled":
    """text_preprocessing's metrics, from its parsed config; `tokenizer`: the `tokenizers.Tokenizer` it encodes with
    (for the number of special tokens a text and a pair get)."""
    enabled, model, probe = settings(config)
    return TokenizationMetrics(model, tokenizer, max_length, probe) if enabled else Disabled()


def prediction_metrics(config: dict[str, Any], labels: Sequence[bytes | str]) -> "PredictionMetrics | Disabled":
    """post_processing's metrics, from its parsed config; `labels`: the class names in id order."""
    enabled, model, probe = settings(config)
    names = [name.decode("utf-8") if isinstance(name, bytes) else name for name in labels]
    return PredictionMetrics(model, names, probe) if enabled else Disabled()


# ------------------------------------------------------------------------------------------------------ sending

class Sender:
    """Sends metric updates to Triton from a thread of its own, every `interval_s`: counter increments summed since
    the last send (one call per counter), histogram observations one by one."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Any, float] = {}
        self._observations: list[tuple[Any, float]] = []
        self._dropped = 0
        self._failures = 0
        self._stop = threading.Event()
        self._server = os.getppid()  # tritonserver: once it is gone, an update would wait for it forever
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="tritoned-metrics", daemon=True)
        self._thread.start()

    def add(self, counts: dict[Any, float], observations: list[tuple[Any, float]]) -> None:
        with self._lock:
            for metric, amount in counts.items():
                self._counts[metric] = self._counts.get(metric, 0.0) + amount
            room = MAX_PENDING_OBSERVATIONS - len(self._observations)
            self._observations.extend(observations[:max(room, 0)])
            self._dropped += max(len(observations) - max(room, 0), 0)

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            observations, self._observations = self._observations, []
            dropped, self._dropped = self._dropped, 0
        if dropped:
            LOGGER.warning("%d metric observations dropped: the server took no update for a long time", dropped)
        if os.getppid() != self._server:  # tritonserver died (this stub is exiting): nobody to send them to
            return
        try:
            for metric, amount in counts.items():
                metric.increment(amount)
            for metric, value in observations:
                metric.observe(value)
        except Exception:  # noqa: BLE001 - metrics must never take the model down
            self._failures += 1
            if self._failures == 1:
                LOGGER.exception("sending metrics failed (logged once; serving is not affected)")

    def close(self) -> None:
        """Stops the thread and sends what is pending (the model's finalize)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.flush()


def is_probe(request: Any, probe_parameter: str) -> bool:
    parameters = request.parameters()  # a JSON object; the ensemble passes its request's parameters on
    return probe_parameter in parameters and json.loads(parameters).get(probe_parameter) is True


def _guarded(record: Any) -> Any:
    """Recording errors are logged once and never fail the batch being answered."""
    def guarded(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            record(self, *args, **kwargs)
        except Exception:  # noqa: BLE001 - metrics must never cost a client its answer
            self._record_failures += 1
            if self._record_failures == 1:
                LOGGER.exception("recording metrics failed (logged once; the answers are not affected)")
    return guarded


# ------------------------------------------------------------------------------------------- text_preprocessing

def reason_of(message: str) -> str:
    return next((reason for reason, phrase in REJECT_REASONS.items() if phrase in message), OTHER_REASON)


def tokens_before_truncation(encoding: Any, single_specials: int, pair_specials: int) -> tuple[int, bool]:
    """(tokens the tokenizer would give without truncation, special tokens included; whether it was truncated).

    A single text (a `tokenizers.Encoding`): the kept tokens plus those of every overflowing piece less the special
    tokens each piece gets. A pair (truncating_encoder's PairEncoding): both sides' lengths before truncation plus
    the pair's special tokens. A text longer than the prefix text_preprocessing tokenizes for a long text is
    counted as that prefix: a lower bound, far above the max length.
    """
    if hasattr(encoding, "first_length"):  # a PairEncoding
        length = encoding.first_length + encoding.second_length + pair_specials
        return length, length > len(encoding.ids)
    overflowing = encoding.overflowing
    if not overflowing:
        return len(encoding), False  # (not len(encoding.ids): that copies the ids into a list)
    return len(encoding) + sum(len(piece) - single_specials for piece in overflowing), True


class TokenizationMetrics:
    def __init__(self, model: str, tokenizer: Any, max_length: int, probe_parameter: str) -> None:
        self._probe_parameter = probe_parameter
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
        buckets = [float(bound) for bound in sorted({*LENGTH_BUCKETS, max_length})]
        self._lengths = lengths.Metric(labels=labels, buckets=buckets)
        # Every series exists from the start (at 0): rate() and the dashboard see it before the first rejection.
        self._rejected = {reason: rejected.Metric(labels={**labels, "reason": reason})
                          for reason in [*REJECT_REASONS, OTHER_REASON]}
        self._single_specials = tokenizer.num_special_tokens_to_add(False)
        self._pair_specials = tokenizer.num_special_tokens_to_add(True)
        self._record_failures = 0
        self._sender = Sender()

    @_guarded
    def record(self, requests: Sequence[Any], responses: Sequence[Any], encodings: Sequence[Any] | None) -> None:
        """Counts one `execute` call: `responses[i]` answers `requests[i]`; `encodings` are those of the texts of
        the requests answered without error, in order (None: unknown, only texts and rejections are counted)."""
        counts: dict[Any, float] = {}
        observations: list[tuple[Any, float]] = []
        failed = [response.has_error() for response in responses]
        probes = [is_probe(request, self._probe_parameter) for request in requests]
        if encodings is not None and not any(failed) and not any(probes):
            # The common case, without a look at the requests: every text is counted.
            self._count_texts(encodings, counts, observations)
        else:
            start = 0
            for request, response, response_failed, probe in zip(requests, responses, failed, probes):
                rows = int(pb_utils.get_input_tensor_by_name(request, "text_input").shape()[0])
                if response_failed:
                    if not probe:
                        rejected = self._rejected[reason_of(response.error().message())]
                        counts[rejected] = counts.get(rejected, 0.0) + rows
                    continue
                if not probe:
                    if encodings is None:
                        counts[self._tokenized] = counts.get(self._tokenized, 0.0) + rows
                    else:
                        self._count_texts(encodings[start:start + rows], counts, observations)
                start += rows
        self._sender.add(counts, observations)

    def _count_texts(self, encodings: Sequence[Any], counts: dict[Any, float],
                     observations: list[tuple[Any, float]]) -> None:
        """Texts tokenized and truncated, and the token counts, of `encodings`."""
        counts[self._tokenized] = counts.get(self._tokenized, 0.0) + len(encodings)
        for encoding in encodings:
            length, truncated = tokens_before_truncation(encoding, self._single_specials, self._pair_specials)
            if truncated:
                counts[self._truncated] = counts.get(self._truncated, 0.0) + 1
            observations.append((self._lengths, float(length)))

    def close(self) -> None:
        self._sender.close()


# ---------------------------------------------------------------------------------------------- post_processing

class PredictionMetrics:
    def __init__(self, model: str, labels: list[str], probe_parameter: str) -> None:
        self._probe_parameter = probe_parameter
        self._families = [  # a family lives as long as its Python object
            pb_utils.MetricFamily("tritoned_label_predictions_total",
                                  "Texts answered with this label (multi-label models: every label applied).",
                                  pb_utils.MetricFamily.COUNTER),
            pb_utils.MetricFamily("tritoned_top_score",
                                  "Score of each answered text's top label (its probability; a regression head's "
                                  "value).", pb_utils.MetricFamily.HISTOGRAM),
        ]
        predictions, scores = self._families
        # Every series exists from the start (at 0): rate() and the dashboard see a label before it is first predicted.
        self._predictions = [predictions.Metric(labels={"model": model, "label": name}) for name in labels]
        self._scores = [scores.Metric(labels={"model": model, "label": name}, buckets=list(SCORE_BUCKETS))
                        for name in labels]
        self._record_failures = 0
        self._sender = Sender()

    @_guarded
    def record(self, requests: Sequence[Any], responses: Sequence[Any], top: Any, scores: Any,
               applied: Any = None) -> None:
        """Counts one `execute` call: `responses[i]` answers `requests[i]`; `top` (class ids) and `scores` hold one
        row per text of all requests, in order (numpy arrays); `applied` (multi-label models): a [texts, num_labels]
        boolean array of the labels each answer applies, counted instead of the top label."""
        top_ids, top_scores = top.reshape(-1).tolist(), scores.reshape(-1).tolist()
        excluded = [response.has_error() or is_probe(request, self._probe_parameter)
                    for request, response in zip(requests, responses)]
        if any(excluded):  # keep only the rows of the requests answered (and not the probe's)
            rows = [int(pb_utils.get_input_tensor_by_name(request, "logits").shape()[0]) for request in requests]
            kept = [row for index, (start, size) in enumerate(zip(itertools.accumulate([0, *rows]), rows))
                    if not excluded[index] for row in range(start, start + size)]
        else:
            kept = range(len(top_ids))
        if applied is None:
            labels = Counter(top_ids[row] for row in kept)
        else:
            labels = Counter(label for row in kept for label in applied[row].nonzero()[0].tolist())
        counts = {self._predictions[label]: float(count) for label, count in labels.items()}
        observations = [(self._scores[top_ids[row]], float(top_scores[row])) for row in kept]
        self._sender.add(counts, observations)

    def close(self) -> None:
        self._sender.close()
