"""Triton Python model: logits -> label, score and probabilities.

The logits of all requests in one `execute` call go through one softmax; each request gets back the
id2label name of its top class, that class's probability, and all probabilities in id order. A request
whose logits are not all finite (NaN/inf: a broken model, or a client calling this model directly) gets
an error of its own instead of a label picked from NaN probabilities; the other requests are served.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        num_labels = int(config["input"][0]["dims"][0])
        model_dir = Path(args["model_repository"]) / args["model_version"]
        self.labels = load_labels(model_dir / "id2label.json", num_labels)
        self.metrics = tritoned_metrics.prediction_metrics(config, self.labels)

    def execute(self, requests: list[Any]) -> list[Any]:
        logits = [pb_utils.get_input_tensor_by_name(r, "logits").as_numpy() for r in requests]
        all_logits = np.concatenate(logits).astype(np.float32, copy=False)
        finite = np.isfinite(all_logits).all(axis=1)
        with np.errstate(invalid="ignore", over="ignore"):  # rows with NaN/inf are answered with an error below
            probabilities = softmax(all_logits)
        top = probabilities.argmax(axis=1)
        labels = self.labels[top].reshape(-1, 1)
        scores = probabilities[np.arange(len(top)), top].reshape(-1, 1)

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
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("label", labels[start:end]),
                pb_utils.Tensor("score", scores[start:end]),
                pb_utils.Tensor("probabilities", probabilities[start:end]),
            ]))
            start = end
        self.metrics.record(requests, responses, top, scores)
        return responses

    def finalize(self) -> None:
        self.metrics.close()
