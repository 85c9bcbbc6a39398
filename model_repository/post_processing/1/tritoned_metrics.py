"""post_processing's tritoned_* metrics, served by Triton on its metrics port (8002) beside its own nv_* ones.

- tritoned_label_predictions_total{model,label}  texts answered with this label; a multi-label model counts every
                                                 label it applies (so a text may count for several labels, or none)
- tritoned_top_score{model,label}                histogram: the score of each answered text's top label (`label` /
                                                 `score` of the answer: a probability, or a regression head's value)

`model` is the ensemble's name, `label` an id2label name: at most 2 x num_labels series (plus the buckets). Only
answered texts count: not a request refused for non-finite logits, nor the gateway's health probe (requests with the
parameter tritoned_probe=true). make_triton_image.sh renders two config parameters: `model_metrics` ("true", or
"false" with --no-model-metrics) and `model_name`. Off (or without the parameter) no metric family is created and
`record` does nothing.

Cost: every update of a Python-backend metric is a round trip to the server (measured: ~18 us, of which ~16 us
CPU in the stub and the server together): a batch costs one increment per label predicted in it and one `observe`
per text (a histogram has no weighted observe). Recording never fails a batch: an error is logged, the answers go out.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

LOGGER = logging.getLogger("post_processing.metrics")
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # and +Inf
PROBE_PARAMETER = "tritoned_probe"  # the gateway's health probe: not counted (see text_preprocessing's module)


class Disabled:
    """What `create` returns when metrics are off: records nothing."""

    def record(self, requests: Sequence[Any], responses: Sequence[Any], top: np.ndarray, scores: np.ndarray,
               applied: np.ndarray | None = None) -> None:
        pass


def settings(config: dict[str, Any]) -> tuple[bool, str]:
    """(metrics on, the `model` label) from the config parameters make_triton_image.sh renders."""
    parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    if parameters.get("model_metrics") == "true" and not parameters.get("model_name"):
        raise ValueError(f"{config.get('name')}: model_metrics is on but model_name (the metrics' model label) is "
                         "missing; assemble the repository with make_triton_image.sh")
    return parameters.get("model_metrics") == "true", parameters.get("model_name", "")


def is_probe(request: Any) -> bool:
    parameters = request.parameters()  # a JSON object; the ensemble passes its request's parameters on
    return PROBE_PARAMETER in parameters and json.loads(parameters).get(PROBE_PARAMETER) is True


def create(config: dict[str, Any], labels: Sequence[bytes | str]) -> "PredictionMetrics | Disabled":
    """The metrics of the model whose parsed config this is; `labels`: the class names in id order."""
    enabled, model = settings(config)
    if not enabled:
        return Disabled()
    return PredictionMetrics(model, [name.decode("utf-8") if isinstance(name, bytes) else name for name in labels])


class PredictionMetrics:
    def __init__(self, model: str, labels: list[str]) -> None:
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
        self._failures = 0

    def record(self, requests: Sequence[Any], responses: Sequence[Any], top: np.ndarray, scores: np.ndarray,
               applied: np.ndarray | None = None) -> None:
        """Counts one `execute` call: `responses[i]` answers `requests[i]`; `top` (class ids) and `scores` hold one
        row per text of all requests, in order; `applied` (multi-label models): a [texts, num_labels] boolean mask
        of the labels each answer applies, counted instead of the top label."""
        try:
            self._record(requests, responses, top, scores, applied)
        except Exception:  # noqa: BLE001 - metrics must never cost a client its answer
            self._failures += 1
            if self._failures == 1:
                LOGGER.exception("recording metrics failed (logged once; the answers are not affected)")

    def _record(self, requests: Sequence[Any], responses: Sequence[Any], top: np.ndarray, scores: np.ndarray,
                applied: np.ndarray | None) -> None:
        rows = [int(pb_utils.get_input_tensor_by_name(request, "logits").shape()[0]) for request in requests]
        answered = np.repeat([not (response.has_error() or is_probe(request))
                              for request, response in zip(requests, responses)], rows)
        if not answered.any():
            return
        top = np.asarray(top).reshape(-1)[answered]
        if applied is None:
            counts = np.bincount(top, minlength=len(self._predictions))
        else:
            counts = np.asarray(applied, dtype=bool).reshape(len(answered), -1)[answered].sum(axis=0)
        for label in np.flatnonzero(counts).tolist():
            self._predictions[label].increment(float(counts[label]))
        for label, score in zip(top.tolist(), np.asarray(scores).reshape(-1)[answered].tolist()):
            self._scores[label].observe(float(score))
