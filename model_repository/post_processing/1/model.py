"""Triton Python model: logits -> label, score, probabilities [, labels], as transformers' text-classification
pipeline answers.

The pipeline's output function (`function_to_apply`: softmax, sigmoid or none, rendered into the config by
make_triton_image.sh from conversion_report.json) goes over the logits of all requests in one `execute` call. A
request may carry the request parameter `function_to_apply` ("softmax", "sigmoid" or "none"; the ensemble passes
its request's parameters on): its texts then get that function instead (label, score, probabilities and labels all
follow it); any other value gets that request alone an INVALID_ARG error. Each text gets back the id2label name of
its top class (`label`), that class's value (`score`), and every class's value in id order (`probabilities`:
probabilities for softmax, independent per-class probabilities for sigmoid, the raw logits for none, e.g. a
regression head's prediction). A multi-label model (sigmoid over 2+ labels) also has the output `labels`: the names
of the classes whose value is >= the `label_threshold` parameter, highest value first, padded with "" to num_labels
names (all "" when none applies).

A request whose logits are not all finite (NaN/inf: a broken model, or a client calling this model directly)
gets an error of its own instead of a label picked from NaN; the other requests are served.

The id2label rules and the functions are tritoned_heads.py's (model_repository/tritoned_heads.py, copied beside
this file by make_triton_image.sh), the same code the converter and the build-time checks run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
import tritoned_heads  # id2label rules and the pipeline's functions (model_repository/tritoned_heads.py)
import tritoned_metrics  # tritoned_* metrics (model_repository/tritoned_metrics.py, copied beside this file)

# The request parameter that picks the function for one request (the gateway sets it for HF and TEI requests).
FUNCTION_PARAMETER = "function_to_apply"
ALLOWED = ", ".join(f'"{name}"' for name in tritoned_heads.FUNCTIONS)


def load_labels(path: Path, num_labels: int) -> np.ndarray:
    """id2label.json ({"0": name, ...}) as an array of UTF-8 names indexed by class id."""
    names = tritoned_heads.read_id2label(path, "post_processing: id2label")
    if len(names) != num_labels:
        raise ValueError(f"post_processing: {path} names {len(names)} labels but the model has {num_labels} logits; "
                         "assemble the repository again with make_triton_image.sh")
    return np.array([name.encode("utf-8") for name in names], dtype=np.object_)


def parameter(config: dict[str, Any], key: str) -> str:
    return str(config["parameters"][key]["string_value"])


def requested_function(request: Any, default: str) -> str | Any:
    """The function for `request`: its `function_to_apply` parameter, else `default`; a TritonError (INVALID_ARG)
    when the parameter is not one of the functions' names."""
    raw = request.parameters()  # a JSON object, "{}" without parameters
    if FUNCTION_PARAMETER not in raw:  # the common case, without parsing
        return default
    parameters = json.loads(raw)
    if FUNCTION_PARAMETER not in parameters:
        return default
    value = parameters[FUNCTION_PARAMETER]
    if isinstance(value, str) and value in tritoned_heads.FUNCTIONS:
        return value
    shown = repr(value) if len(repr(value)) <= 64 else repr(value)[:64] + "..."
    return pb_utils.TritonError(f"request parameter {FUNCTION_PARAMETER} must be one of {ALLOWED} (a string), got "
                                f"{shown}", pb_utils.TritonError.INVALID_ARG)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        num_labels = int(config["input"][0]["dims"][0])
        model_dir = Path(args["model_repository"]) / args["model_version"]
        self.labels = load_labels(model_dir / "id2label.json", num_labels)
        self.function = parameter(config, "function_to_apply")
        if self.function not in tritoned_heads.FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {ALLOWED}, got {self.function!r}")
        self.threshold = float(parameter(config, "label_threshold"))
        self.with_labels = "labels" in [output["name"] for output in config["output"]]
        self.metrics = tritoned_metrics.prediction_metrics(config, self.labels)

    def execute(self, requests: list[Any]) -> list[Any]:
        logits = [pb_utils.get_input_tensor_by_name(r, "logits").as_numpy() for r in requests]
        functions = [requested_function(request, self.function) for request in requests]
        all_logits = np.concatenate(logits).astype(np.float32, copy=False)
        finite = np.isfinite(all_logits).all(axis=1)
        with np.errstate(invalid="ignore", over="ignore"):  # rows with NaN/inf are answered with an error below
            values = self.apply(functions, [len(chunk) for chunk in logits], all_logits)
        top = values.argmax(axis=1)
        labels = self.labels[top].reshape(-1, 1)
        scores = values[np.arange(len(top)), top].reshape(-1, 1)
        applied = values >= self.threshold if self.with_labels else None  # [n, num_labels]: which labels apply
        applicable = self.applicable_labels(values, applied) if applied is not None else None

        responses = []
        start = 0
        for chunk, function in zip(logits, functions):
            end = start + len(chunk)
            if isinstance(function, pb_utils.TritonError):
                responses.append(pb_utils.InferenceResponse(error=function))
                start = end
                continue
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

    def apply(self, functions: list[Any], sizes: list[int], logits: np.ndarray) -> np.ndarray:
        """Each request's function over its rows of `logits` (a refused request's rows get the default's)."""
        if all(function == self.function for function in functions):  # the common case: one call for the batch
            return tritoned_heads.apply(self.function, logits)
        names = np.repeat([function if isinstance(function, str) else self.function for function in functions], sizes)
        values = np.empty_like(logits)
        for name in set(names.tolist()):
            rows = names == name
            values[rows] = tritoned_heads.apply(name, logits[rows])
        return values

    def applicable_labels(self, values: np.ndarray, applied: np.ndarray) -> np.ndarray:
        """[n, num_labels] names: those that apply (value >= threshold), highest first (ties by class id), then ""."""
        order = np.argsort(-values, axis=1, kind="stable")
        names = self.labels[order]
        names[~np.take_along_axis(applied, order, axis=1)] = b""
        return names

    def finalize(self) -> None:
        self.metrics.close()
