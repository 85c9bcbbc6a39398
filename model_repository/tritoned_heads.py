"""The one home of a classifier head's facts: the id2label rules and the pipeline's output functions.

Used by utils/convert_to_onnx.py (the labels it writes), utils/validate_artifacts.py (the build-time check),
utils/label_file.py, utils/onnx_optimize.py (the int8 agreement check runs the served functions) and, inside
Triton, model_repository/post_processing/1/model.py (make_triton_image.sh copies this file beside it, as it does
tritoned_metrics.py). Standard library and numpy only, numpy 1.26 compatible (the serving side runs it).

id2label: a non-empty JSON object whose keys are exactly "0".."N-1" (decimal, no gaps, no leading zeros), N the
model's number of logits, and whose values are non-empty strings without line breaks or other control characters
(Triton's label file holds one name per line).

The pipeline's output function (transformers/pipelines/text_classification.py, `postprocess`): problem_type
"regression" -> none (the raw logits); "multi_label_classification", or a single logit -> sigmoid; otherwise
softmax. Each goes over the last axis of the logits, in float32.
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

EXAMPLE = '{"0": "negative", "1": "positive"}'
# Control characters (\n, \r, \t, NUL...), line and paragraph separators: Triton's label file cannot hold them.
LINE_BREAKING = {"Cc", "Zl", "Zp"}


class LabelError(ValueError):
    """id2label breaks a rule; the message names where and the fix."""


def label_name_problem(name: str) -> str | None:
    """Why Triton's label file cannot hold `name` (one name per line), or None."""
    bad = sorted({char for char in name if unicodedata.category(char) in LINE_BREAKING})
    if not bad:
        return None
    shown = ", ".join(repr(char) for char in bad)
    return (f"contains {shown}: a line break or control character that Triton's label file (one name per line, "
            "for top-k answers) cannot hold")


def check_id2label(data: Any, where: str, source: str, fix: str | None = None) -> list[str]:
    """The label names of `data` (parsed id2label) in id order, or LabelError. `where` names the argument
    (e.g. "id2label", "--id2label"), `source` the thing checked (a path, "config.id2label"), `fix` what to do about
    a bad name (default: rename the class in `source`)."""
    if not isinstance(data, dict) or not data:
        raise LabelError(f"{where}: {source} must be a non-empty JSON object like {EXAMPLE}")
    keys = [str(index) for index in range(len(data))]
    if set(data) != set(keys):
        raise LabelError(f"{where}: keys must be \"0\"..\"{len(data) - 1}\" with no gaps, got {sorted(data)} in "
                         f"{source}; number the classes in the order of the model's logits")
    bad = [int(key) for key in keys if not isinstance(data[key], str) or not data[key].strip()]
    if bad:
        raise LabelError(f"{where}: the label names of keys {bad} in {source} must be non-empty strings")
    for key in keys:
        problem = label_name_problem(data[key])
        if problem:
            raise LabelError(f"{where}: the label name of key \"{key}\" ({data[key]!r}) {problem}; "
                             f"{fix or f'rename the class in {source}'}")
    return [data[key] for key in keys]


def load_json(path: Path, where: str = "id2label") -> Any:
    """The JSON of the id2label file at `path`, not yet checked; LabelError when it is not UTF-8 JSON (OSError when
    it cannot be read)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LabelError(f"{where}: {path} is not valid JSON ({err}); write an object like {EXAMPLE}") from err


def read_id2label(path: Path, where: str = "id2label") -> list[str]:
    """The label names of the id2label file at `path`, in id order; LabelError when it breaks a rule."""
    return check_id2label(load_json(path, where), where, str(path))


def id2label_json(names: list[str]) -> dict[str, str]:
    """The id2label object of `names` in id order (what the converter writes)."""
    return {str(index): name for index, name in enumerate(names)}


# ------------------------------------------------------------------------------------------- output functions

def pipeline_function(problem_type: str | None, num_labels: int) -> str:
    """The function the pipeline applies by default to a model with this config."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"  # single_label_classification, or no problem_type and several labels


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative x: 1 / inf = 0, as intended
        return 1.0 / (1.0 + np.exp(-logits))


def identity(logits: np.ndarray) -> np.ndarray:
    return logits


FUNCTIONS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = {"softmax": softmax, "sigmoid": sigmoid,
                                                                 "none": identity}


def apply(function: str, logits: Any) -> np.ndarray:
    """`function` (softmax, sigmoid or none) over the last axis of `logits`, in float32 as the pipeline does."""
    return FUNCTIONS[function](np.asarray(logits, dtype=np.float32)).astype(np.float32, copy=False)
