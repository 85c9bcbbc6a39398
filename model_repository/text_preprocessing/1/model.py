"""Triton Python model: texts -> token ids for the ONNX classifier.

All texts of all requests in one `execute` call go through the tokenizer in a single call; each request
is then padded to the longest of its own texts (never to a fixed length), so a short request never pays
for a long neighbour. A request whose text is not valid UTF-8 gets its own error; the rest are served.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

LOGGER = logging.getLogger("text_preprocessing")
PAD_TOKEN_CANDIDATES = ("[PAD]", "<pad>", "<PAD>", "[pad]")


def find_pad_id(tokenizer: Tokenizer, tokenizer_dir: Path) -> int:
    """The pad id the model was trained with: tokenizer.json's padding, else tokenizer_config.json."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    config_file = tokenizer_dir / "tokenizer_config.json"
    candidates: list[str] = []
    if config_file.is_file():
        pad = json.loads(config_file.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            candidates.append(pad)
    for token in (*candidates, *PAD_TOKEN_CANDIDATES):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def decode_texts(raw: np.ndarray) -> list[str]:
    """Decode a [n, 1] BYTES tensor into n strings; raises ValueError naming the first bad row."""
    texts = []
    for row, value in enumerate(raw.reshape(-1)):
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"text_input[{row}] is not valid UTF-8 ({err.reason} at byte {err.start})") from err
    return texts


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        model_dir = Path(args["model_repository"]) / args["model_version"]
        tokenizer_dir = model_dir / "tokenizer"
        self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.pad_id = find_pad_id(self.tokenizer, tokenizer_dir)
        self.max_length = int(config["parameters"]["max_sequence_length"]["string_value"])
        # tokenizer.json saved by transformers may carry a fixed padding length: never trust it.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.output_names = [output["name"] for output in config["output"]]
        self.with_token_type_ids = "token_type_ids" in self.output_names
        encode = getattr(self.tokenizer, "encode_batch_fast", None)
        self.encode_batch = encode if encode is not None else self.tokenizer.encode_batch
        LOGGER.info("max_length=%d pad_id=%d outputs=%s", self.max_length, self.pad_id, self.output_names)

    def execute(self, requests: list[Any]) -> list[Any]:
        per_request: list[list[str] | str] = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
                per_request.append(decode_texts(raw))
            except ValueError as err:
                per_request.append(str(err))

        all_texts = [text for texts in per_request if isinstance(texts, list) for text in texts]
        encodings = self.encode_batch(all_texts) if all_texts else []

        responses = []
        start = 0
        for texts in per_request:
            if isinstance(texts, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(texts)))
                continue
            batch = encodings[start:start + len(texts)]
            start += len(texts)
            responses.append(pb_utils.InferenceResponse(output_tensors=self._tensors(batch)))
        return responses

    def _tensors(self, batch: list[Any]) -> list[Any]:
        length = max(len(encoding.ids) for encoding in batch)
        input_ids = np.full((len(batch), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), length), dtype=np.int64)
        token_type_ids = np.zeros((len(batch), length), dtype=np.int64)
        for row, encoding in enumerate(batch):
            size = len(encoding.ids)
            input_ids[row, :size] = encoding.ids
            attention_mask[row, :size] = encoding.attention_mask
            if self.with_token_type_ids:
                token_type_ids[row, :size] = encoding.type_ids
        tensors = [pb_utils.Tensor("input_ids", input_ids), pb_utils.Tensor("attention_mask", attention_mask)]
        if self.with_token_type_ids:
            tensors.append(pb_utils.Tensor("token_type_ids", token_type_ids))
        return tensors
