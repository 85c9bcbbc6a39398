"""What the original PyTorch model says about texts: the ground truth served answers are compared to."""
from __future__ import annotations

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
