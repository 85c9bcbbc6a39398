"""What transformers' text-classification pipeline does with a classifier's logits, for the converter and the
int8 check (the served copy of the functions is model_repository/post_processing/1/model.py, which
runs inside Triton without this package).

The pipeline's default `function_to_apply` (transformers/pipelines/text_classification.py, `postprocess`):
problem_type "regression" -> none (the raw logits); "multi_label_classification", or a single logit -> sigmoid;
otherwise softmax.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

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


FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"softmax": softmax, "sigmoid": sigmoid, "none": identity}


def apply(function: str, logits: Any) -> np.ndarray:
    """`function` (softmax, sigmoid or none) over the last axis of `logits`, in float32 as the pipeline does."""
    return FUNCTIONS[function](np.asarray(logits, dtype=np.float32))
