"""What the original PyTorch model says about texts: the ground truth served answers are compared to."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def pytorch_probabilities(hf_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    rows = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding at all in the reference
            encoded = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(torch.softmax(model(**encoded).logits, dim=-1)[0].numpy())
    return np.stack(rows)


def labels_of(probabilities: np.ndarray, id2label: dict[str, str]) -> list[str]:
    return [id2label[str(i)] for i in probabilities.argmax(axis=1)]


def pipeline_answers(hf_dir: Path, items: list, max_length: int, function_to_apply: str | None = None,
                     ) -> list[list[dict]]:
    """transformers.pipeline("text-classification", top_k=None) on each text or {"text", "text_pair"} pair, one
    at a time, truncated as served: every label with its score, highest first (with `function_to_apply`, that
    function instead of the pipeline's default)."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(hf_dir), tokenizer=str(hf_dir), top_k=None, device="cpu")
    answers = []
    for item in items:
        answer = pipe(item if isinstance(item, str) else {"text": item[0], "text_pair": item[1]},
                      truncation=True, max_length=max_length,
                      **({"function_to_apply": function_to_apply} if function_to_apply else {}))
        answers.append(answer[0] if answer and isinstance(answer[0], list) else answer)  # a str comes back nested
    return answers


@dataclass(frozen=True)
class Expected:
    """What the served outputs must hold for one item, from the pipeline's answer."""

    values: np.ndarray  # every label's score in class-id order: `probabilities`
    label: str  # the top label
    score: float  # its score
    applicable: list[str]  # names with score >= threshold, highest first: `labels` of a multi-label model


def expected_outputs(answer: list[dict], id2label: dict[str, str], threshold: float = 0.5) -> Expected:
    label2id = {name: int(key) for key, name in id2label.items()}
    values = np.zeros(len(id2label), dtype=np.float64)
    for entry in answer:
        values[label2id[entry["label"]]] = entry["score"]
    applicable = [entry["label"] for entry in answer if entry["score"] >= threshold]
    return Expected(values, answer[0]["label"], float(answer[0]["score"]), applicable)


def assert_answers(result, want: list[Expected], tolerance: float, multi_label: bool) -> None:
    """The served outputs of one request (tritonclient result) are the pipeline's answers `want`, in order:
    probabilities and score within `tolerance`, the same label, and for a multi-label model the same labels
    (padded with "" to num_labels)."""
    np.testing.assert_allclose(result.as_numpy("probabilities"), np.stack([w.values for w in want]),
                               atol=tolerance, rtol=0)
    assert [v.decode() for v in result.as_numpy("label").reshape(-1)] == [w.label for w in want]
    np.testing.assert_allclose(result.as_numpy("score").reshape(-1), [w.score for w in want], atol=tolerance, rtol=0)
    if multi_label:
        num_labels = len(want[0].values)
        assert [[name.decode() for name in row] for row in result.as_numpy("labels")] == \
               [w.applicable + [""] * (num_labels - len(w.applicable)) for w in want]
    else:
        assert result.as_numpy("labels") is None
