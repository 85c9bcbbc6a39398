"""The in-process references of the benchmark: raw ONNX Runtime (the limit) and the Hugging Face pipeline.

Both classify one text (or one (text, text_pair) pair) per call, tokenization included, exactly like one served
request: the raw ONNX Runtime reference encodes with the same tokenizer.json, configured as Triton's
text_preprocessing configures it (no padding, truncation at the served maximum length), and runs the same
model.onnx file; the pipeline gets a pair as {"text", "text_pair"}.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

LOGGER = logging.getLogger(__name__)
Item = Union[str, tuple[str, str]]  # a text, or a (text, text_pair) pair


def labels_of(onnx_dir: Path) -> list[str]:
    id2label = json.loads((onnx_dir / "id2label.json").read_text(encoding="utf-8"))
    return [id2label[str(i)] for i in range(len(id2label))]


def max_length_of(onnx_dir: Path) -> int:
    report = json.loads((onnx_dir / "conversion_report.json").read_text(encoding="utf-8"))
    return int(report["max_sequence_length"])


class RawOrt:
    """tokenizers + onnxruntime in this process; `threads` 0 = ONNX Runtime's default (one per core)."""

    def __init__(self, onnx_dir: Path, texts: Sequence[Item], threads: int = 0, spinning: bool = True) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer" / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length_of(onnx_dir))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(onnx_dir / "model.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
        self.input_names = [value.name for value in self.session.get_inputs()]
        self.labels = labels_of(onnx_dir)
        self.texts = list(texts)

    def probabilities(self, text: Item) -> np.ndarray:
        encoding = self.tokenizer.encode(*((text,) if isinstance(text, str) else text))
        ids = np.asarray([encoding.ids], dtype=np.int64)
        fields = {"input_ids": ids, "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64),
                  "token_type_ids": np.asarray([encoding.type_ids], dtype=np.int64)}
        logits = self.session.run(["logits"], {name: fields[name] for name in self.input_names})[0][0]
        shifted = np.exp(logits - logits.max())
        return shifted / shifted.sum()

    def __call__(self, index: int) -> str:
        return self.labels[int(self.probabilities(self.texts[index]).argmax())]


class HfPipeline:
    """transformers.pipeline("text-classification") on the PyTorch model, one text per call."""

    def __init__(self, hf_dir: Path, texts: Sequence[Item], max_length: int) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import pipeline

        self.pipe = pipeline("text-classification", model=str(hf_dir), tokenizer=str(hf_dir), device="cpu")
        self.kwargs: dict[str, Any] = {"truncation": True, "max_length": max_length}
        self.inputs = [text if isinstance(text, str) else {"text": text[0], "text_pair": text[1]} for text in texts]

    def __call__(self, index: int) -> str:
        answer = self.pipe(self.inputs[index], **self.kwargs)  # [{label, score}] for a text, {label, score} for a pair
        return str((answer[0] if isinstance(answer, list) else answer)["label"])
