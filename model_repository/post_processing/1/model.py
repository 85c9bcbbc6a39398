"""Triton Python model: logits -> label, score, probabilities [, labels], as transformers' text-classification
pipeline answers.

The pipeline's output function (`function_to_apply`: softmax, sigmoid or none, rendered into the config by
make_triton_image.sh from conversion_report.json) goes over the logits of all requests in one `execute` call.
Each text gets back the id2label name of its top class (`label`), that class's value (`score`), and every class's
value in id order (`probabilities`: probabilities for softmax, independent per-class probabilities for sigmoid,
the raw logits for none, e.g. a regression head's prediction). A multi-label model (sigmoid over 2+ labels) also
has the output `labels`: the names of the classes whose value is >= the `label_threshold` parameter, highest value
first, padded with "" to num_labels names (all "" when none applies).

A request whose logits are not all finite (NaN/inf: a broken model, or a client calling this model directly)
gets an error of its own instead of a label picked from NaN; the other requests are served.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import triton_python_backend_utils as pb_utils
import tritoned_metrics  # tritoned_* metrics (model_repository/tritoned_metrics.py, copied beside this file)


def load_labels(path: Path, num_labels: int) -> np.ndarray:
    """id2label.json ({"0": name, ...}) as an array of UTF-8 names indexed by class id."""
    id2label = json.loads(path.read_text(encoding="utf-8"))
    expected = [str(i) for i in range(num_labels)]
    if sorted(id2label, key=lambda key: int(key) if key.isdigit() else -1) != expected:
        raise ValueError(f"{path}: keys must be exactly {expected[0]}..{expected[-1]} for {num_labels} logits")
    return np.array([id2label[key].encode("utf-8") for key in expected], dtype=np.object_)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def identity(logits: np.ndarray) -> np.ndarray:
    return logits


FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"softmax": softmax, "sigmoid": sigmoid, "none": identity}


def parameter(config: dict[str, Any], key: str) -> str:
    return str(config["parameters"][key]["string_value"])


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        num_labels = int(config["input"][0]["dims"][0])
        model_dir = Path(args["model_repository"]) / args["model_version"]
        self.labels = load_labels(model_dir / "id2label.json", num_labels)
        name = parameter(config, "function_to_apply")
        if name not in FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {sorted(FUNCTIONS)}, got {name!r}")
        self.function = FUNCTIONS[name]
        self.threshold = float(parameter(config, "label_threshold"))
        self.with_labels = "labels" in [output["name"] for output in config["output"]]
        self.metrics = tritoned_metrics.prediction_metrics(config, self.labels)

    def execute(self, requests: list[Any]) -> list[Any]:
        logits = [pb_utils.get_input_tensor_by_name(r, "logits").as_numpy() for r in requests]
        all_logits = np.concatenate(logits).astype(np.float32, copy=False)
        finite = np.isfinite(all_logits).all(axis=1)
        with np.errstate(invalid="ignore", over="ignore"):  # rows with NaN/inf are answered with an error below
            values = self.function(all_logits).astype(np.float32, copy=False)
        top = values.argmax(axis=1)
        labels = self.labels[top].reshape(-1, 1)
        scores = values[np.arange(len(top)), top].reshape(-1, 1)
        applied = values >= self.threshold if self.with_labels else None  # [n, num_labels]: which labels apply
        applicable = self.applicable_labels(values, applied) if applied is not None else None

        responses = []
        start = 0
        for chunk in logits:
            end = start + len(chunk)
            if not finite[start:end].all():
                rows = [int(row) for row in np.flatnonzero(~finite[start:end])]
                message = f"post_processing: logits of row(s) {rows} are not finite (NaN or inf)"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
                start = end
                continue
            tensors = [
                pb_utils.Tensor("label", labels[start:end]),
                pb_utils.Tensor("score", scores[start:end]),
                pb_utils.Tensor("probabilities", values[start:end]),
            ]
            if applicable is not None:
                tensors.append(pb_utils.Tensor("labels", applicable[start:end]))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        self.metrics.record(requests, responses, top, scores, applied=applied)
        return responses

    def applicable_labels(self, values: np.ndarray, applied: np.ndarray) -> np.ndarray:
        """[n, num_labels] names: those that apply (value >= threshold), highest first (ties by class id), then ""."""
        order = np.argsort(-values, axis=1, kind="stable")
        names = self.labels[order]
        names[~np.take_along_axis(applied, order, axis=1)] = b""
        return names

    def finalize(self) -> None:
        self.metrics.close()
