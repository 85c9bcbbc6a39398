"""Triton Python model: texts -> token ids for the ONNX classifier.

All texts of all requests in one `execute` call go through the tokenizer in a single call; each request
is then padded to the longest of its own texts (never to a fixed length), so a short request never pays
for a long neighbour. A request whose text is not valid UTF-8 gets its own error; the rest are served.

A text far beyond the model's limit (say 1 MB) is not tokenized whole only to be truncated: its first
`max_length * PREFIX_CHARS_PER_TOKEN` characters are, and that prefix's tokens are used only when they provably
are those of the whole text (see `prefix_is_enough`); otherwise the whole text is tokenized.
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

LOGGER = logging.getLogger("text_preprocessing")
PAD_TOKEN_CANDIDATES = ("[PAD]", "<pad>", "<PAD>", "[pad]")
# Texts longer than max_length * this many characters are tried as a prefix first (a token is rarely > 10).
PREFIX_CHARS_PER_TOKEN = 50


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


def prefix_is_enough(encoding: Any) -> bool:
    """Whether a truncated prefix's encoding equals the whole text's.

    The normalizers and pre-tokenizers of `tokenizers` act locally (per character, or by regular expressions
    scanned left to right), so cutting a text can change only the pre-token (word) the cut falls in, and the
    model tokenizes each pre-token on its own. If the kept tokens all come from words at least one whole word
    before the prefix's last word, the rest of the text cannot change them. A tokenizer with no word split
    (every token of word 0) never qualifies: its long texts are tokenized whole.
    """
    kept = [word for word in encoding.word_ids if word is not None]
    rest = [word for piece in encoding.overflowing for word in piece.word_ids if word is not None]
    return bool(kept) and bool(rest) and max(kept) + 1 < max(rest)


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
        self.prefix_chars = self.max_length * PREFIX_CHARS_PER_TOKEN
        LOGGER.info("max_length=%d pad_id=%d outputs=%s", self.max_length, self.pad_id, self.output_names)
        self.metrics = tritoned_metrics.tokenization_metrics(config, self.tokenizer, self.max_length, self.prefix_chars)

    def execute(self, requests: list[Any]) -> list[Any]:
        per_request: list[list[str] | str] = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
                per_request.append(decode_texts(raw))
            except ValueError as err:
                per_request.append(str(err))

        all_texts = [text for texts in per_request if isinstance(texts, list) for text in texts]
        try:
            encodings = self.encode(all_texts)
        except Exception:  # never seen; isolate the request that causes it instead of failing the batch
            LOGGER.exception("batched tokenization failed: tokenizing request by request")
            responses = [self._respond_alone(texts) for texts in per_request]
            self.metrics.record(requests, responses, None)
            return responses

        responses = []
        start = 0
        for texts in per_request:
            if isinstance(texts, str):
                responses.append(error_response(texts))
                continue
            batch = encodings[start:start + len(texts)]
            start += len(texts)
            responses.append(pb_utils.InferenceResponse(output_tensors=self._tensors(batch)))
        self.metrics.record(requests, responses, encodings)
        return responses

    def finalize(self) -> None:
        self.metrics.close()

    def encode(self, texts: list[str]) -> list[Any]:
        """Encodings of `texts`: one batched tokenizer call, plus one for the prefixes of texts far beyond
        max_length when there are any (a prefix whose tokens are not provably the whole text's is dropped)."""
        long_rows = [row for row, text in enumerate(texts) if len(text) > self.prefix_chars]
        if not long_rows:
            return self.encode_batch(texts) if texts else []
        # encode_batch (not _fast): prefix_is_enough needs the word ids.
        prefixes = self.tokenizer.encode_batch([texts[row][:self.prefix_chars] for row in long_rows])
        known = {row: enc for row, enc in zip(long_rows, prefixes) if prefix_is_enough(enc)}
        rest = [row for row in range(len(texts)) if row not in known]
        for row, encoding in zip(rest, self.encode_batch([texts[row] for row in rest]) if rest else []):
            known[row] = encoding
        return [known[row] for row in range(len(texts))]

    def _respond_alone(self, texts: list[str] | str) -> Any:
        if isinstance(texts, str):
            return error_response(texts)
        try:
            return pb_utils.InferenceResponse(output_tensors=self._tensors(self.encode(texts)))
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
