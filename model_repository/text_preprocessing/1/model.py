"""Triton Python model: texts (or text pairs) -> token ids for the ONNX classifier.

All texts of all requests in one `execute` call go through the tokenizer in a single call; each request
is then padded to the longest of its own texts (never to a fixed length), so a short request never pays
for a long neighbour. A request whose text is not valid UTF-8 gets its own error; the rest are served.

With a second input `text_pair` (make_triton_image.sh --text-pair), row i is the pair (text_input[i],
text_pair[i]), tokenized as the Hugging Face fast tokenizer does `tokenizer(text, text_pair, truncation=True)`:
the model's pair template, longest-first truncation to max_length, token_type_ids of the template.
Very long texts are tokenized only as far as they provably matter: see truncating_encoder.py.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
import tritoned_metrics  # tritoned_* metrics (model_repository/tritoned_metrics.py, copied beside this file)
from tokenizers import Tokenizer
from truncating_encoder import Item, TruncatingEncoder

LOGGER = logging.getLogger("text_preprocessing")
PAD_TOKEN_CANDIDATES = ("[PAD]", "<pad>", "<PAD>", "[pad]")


def find_pad_id(padding: dict[str, Any] | None, tokenizer: Tokenizer, tokenizer_dir: Path) -> int:
    """The pad id the model was trained with: tokenizer.json's `padding` (as saved), else tokenizer_config.json."""
    if padding is not None:
        return int(padding["pad_id"])
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


def decode_texts(raw: np.ndarray, name: str = "text_input") -> list[str]:
    """Decode a [n, 1] BYTES tensor into n strings; raises ValueError naming the first bad row."""
    texts = []
    for row, value in enumerate(raw.reshape(-1)):
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"{name}[{row}] is not valid UTF-8 ({err.reason} at byte {err.start})") from err
    return texts


def pair_up(texts: list[str], pairs: list[str]) -> list[Item]:
    """(text_input[i], text_pair[i]) for every row; ValueError when the counts differ. An empty text_pair is no
    second text, as for transformers: `tokenizer(text, "")` encodes `text` alone (the pipeline calls it so)."""
    if len(pairs) != len(texts):
        raise ValueError(f"text_pair has {len(pairs)} rows but text_input has {len(texts)}: send one text_pair "
                         "per text_input")
    return [(text, pair) if pair else text for text, pair in zip(texts, pairs)]


def error_response(message: str) -> Any:
    """A per-request error; INVALID_ARG makes it HTTP 400 / gRPC INVALID_ARGUMENT (not 500) where supported."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        model_dir = Path(args["model_repository"]) / args["model_version"]
        tokenizer_dir = model_dir / "tokenizer"
        self.max_length = int(config["parameters"]["max_sequence_length"]["string_value"])
        self.encoder = TruncatingEncoder(str(tokenizer_dir / "tokenizer.json"), self.max_length)
        self.pad_id = find_pad_id(self.encoder.saved_padding, self.encoder.tokenizer, tokenizer_dir)
        self.output_names = [output["name"] for output in config["output"]]
        self.with_token_type_ids = "token_type_ids" in self.output_names
        self.with_text_pair = "text_pair" in [item["name"] for item in config["input"]]
        LOGGER.info("max_length=%d pad_id=%d pairs=%s outputs=%s", self.max_length, self.pad_id,
                    self.with_text_pair, self.output_names)
        self.metrics = tritoned_metrics.tokenization_metrics(config, self.encoder.tokenizer, self.max_length)

    def execute(self, requests: list[Any]) -> list[Any]:
        per_request: list[list[Item] | str] = []
        for request in requests:
            try:
                per_request.append(self._decode(request))
            except ValueError as err:
                per_request.append(str(err))

        all_items = [item for items in per_request if isinstance(items, list) for item in items]
        try:
            encodings = self.encode(all_items)
        except Exception:  # never seen; isolate the request that causes it instead of failing the batch
            LOGGER.exception("batched tokenization failed: tokenizing request by request")
            responses = [self._respond_alone(items) for items in per_request]
            self.metrics.record(requests, responses, None)
            return responses

        responses = []
        start = 0
        for items in per_request:
            if isinstance(items, str):
                responses.append(error_response(items))
                continue
            batch = encodings[start:start + len(items)]
            start += len(items)
            responses.append(pb_utils.InferenceResponse(output_tensors=self._tensors(batch)))
        self.metrics.record(requests, responses, encodings)
        return responses

    def _decode(self, request: Any) -> list[Item]:
        """The request's texts, or its (text, text_pair) pairs; ValueError saying what is wrong with them."""
        texts = decode_texts(pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy())
        if not self.with_text_pair:
            return list(texts)
        pairs = decode_texts(pb_utils.get_input_tensor_by_name(request, "text_pair").as_numpy(), "text_pair")
        return pair_up(texts, pairs)

    def finalize(self) -> None:
        self.metrics.close()

    def encode(self, items: list[Item]) -> list[Any]:
        """Encodings of `items` (texts or pairs): one batched tokenizer call, plus one for the prefixes of items
        far beyond max_length when there are any (see truncating_encoder.py)."""
        return self.encoder.encode(items)

    def _respond_alone(self, items: list[Item] | str) -> Any:
        if isinstance(items, str):
            return error_response(items)
        try:
            return pb_utils.InferenceResponse(output_tensors=self._tensors(self.encode(items)))
        except Exception as err:  # noqa: BLE001 - reported to the client that sent it
            error = pb_utils.TritonError(f"text_preprocessing: tokenizer failed: {err}")
            return pb_utils.InferenceResponse(error=error)

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
