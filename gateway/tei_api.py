"""Text Embeddings Inference's classifier API (huggingface/text-embeddings-inference, router/src/http/server.rs
and types.rs; docs/openapi.json): POST /predict, POST /rerank, GET /info, with TEI's request shapes, answers,
error body {"error", "error_type"} and status codes (ErrorType -> status as TEI maps it).

What TEI's options mean here, as in TEI: `raw_scores` asks for the logits (the ensemble's function "none");
`truncate` defaults to /info's auto_truncate, true here (the pipeline truncates to max_sequence_length);
`truncate: false` with an input over max_input_length tokens is refused (422) as TEI refuses it;
`truncation_direction` "Left" is refused (the ensemble truncates as the pipeline does, on the right);
`return_text` adds each text to its rank. /rerank serves one-logit pair models (cross-encoders) and answers
424 "model is not a re-ranker model" otherwise, as TEI; /predict serves every model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .classify import MAX_CLIENT_BATCH_SIZE, ApiError, Item, Job, check_items
from .manifest import Manifest

STATUS = {"Unhealthy": 503, "Backend": 424, "Overloaded": 429, "Validation": 422, "Tokenizer": 422, "Empty": 400}
MAX_CHAR_MULTIPLIER = 250  # TEI's limit of characters per token before it tokenizes (core/src/tokenization.rs)
SPECIAL_TOKENS_BOUND = 8  # special tokens a (pair) template adds, at most; a text of n UTF-8 bytes has <= n tokens
TOKENIZER = Path("text_preprocessing") / "1" / "tokenizer" / "tokenizer.json"


def error_body(message: str, error_type: str) -> dict[str, str]:
    return {"error": message, "error_type": error_type}


def _invalid(message: str) -> ApiError:
    return ApiError(422, message, "Validation")  # serde's refusals of a body: TEI answers 422 Validation


def _bool(body: dict[str, Any], name: str, default: bool | None) -> bool | None:
    value = body.get(name, default)
    if value is None:
        if default is None:
            return None
        raise _invalid(f"invalid type: null, expected a boolean for `{name}`")
    if not isinstance(value, bool):
        raise _invalid(f"invalid type: {type(value).__name__}, expected a boolean for `{name}`")
    return value


def _options(body: dict[str, Any]) -> tuple[bool | None, bool]:
    """(truncate, raw_scores); truncation_direction must be right."""
    direction = body.get("truncation_direction", "Right")
    if direction not in ("Right", "right", "Left", "left"):
        raise _invalid(f"unknown variant `{direction!s:.40}` for `truncation_direction`, expected `Left` or `Right`")
    if direction in ("Left", "left"):
        raise _invalid("truncation_direction `Left` is not supported: this server truncates on the right, as the "
                       "transformers pipeline does")
    return _bool(body, "truncate", None), bool(_bool(body, "raw_scores", False))


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"invalid type: {type(value).__name__} at {where}, expected a string")
    return value


def _sequence(value: Any, where: str) -> Item:
    if not isinstance(value, list) or len(value) not in (1, 2):
        raise _invalid(f"invalid value at {where}: expected a string, a pair of strings [string, string] or a batch "
                       "of mixed strings and pairs [[string], [string, string], ...]")
    texts = [_text(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return texts[0], (texts[1] if len(texts) == 2 else None)


def parse_predict(body: Any) -> tuple[list[Item], bool, bool | None, bool]:
    """(items, batched, truncate, raw_scores) of a /predict body (TEI's PredictRequest)."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise _invalid("missing field `inputs`: the body is {\"inputs\": ..., \"raw_scores\": false, \"truncate\": "
                       "false}")
    inputs = body["inputs"]
    truncate, raw_scores = _options(body)
    if isinstance(inputs, str):
        return [(inputs, None)], False, truncate, raw_scores
    if not isinstance(inputs, list) or not inputs:
        raise _invalid("invalid length 0 or type of `inputs`: expected a string, a pair of strings [string, string] "
                       "or a batch of mixed strings and pairs [[string], [string, string], ...]")
    if isinstance(inputs[0], str):  # one text or one pair
        return [_sequence(inputs, "inputs")], False, truncate, raw_scores
    return [_sequence(value, f"inputs[{index}]") for index, value in enumerate(inputs)], True, truncate, raw_scores


def parse_rerank(body: Any) -> tuple[str, list[str], bool | None, bool, bool]:
    """(query, texts, truncate, raw_scores, return_text) of a /rerank body (TEI's RerankRequest)."""
    if not isinstance(body, dict):
        raise _invalid("invalid type: expected a JSON object {\"query\": ..., \"texts\": [...]}")
    for name in ("query", "texts"):
        if name not in body:
            raise _invalid(f"missing field `{name}`")
    query = _text(body["query"], "`query`")
    if not isinstance(body["texts"], list):
        raise _invalid(f"invalid type: {type(body['texts']).__name__} at `texts`, expected a sequence of strings")
    texts = [_text(text, f"`texts[{index}]`") for index, text in enumerate(body["texts"])]
    truncate, raw_scores = _options(body)
    return query, texts, truncate, raw_scores, bool(_bool(body, "return_text", False))


def predict_job(body: Any, manifest: Manifest, counter: "TokenCounter") -> tuple[Job, bool]:
    items, batched, truncate, raw_scores = parse_predict(body)
    check_items(items, manifest)
    if truncate is False:
        counter.check(items)
    return Job(items, "none" if raw_scores else None), batched


def rerank_job(body: Any, manifest: Manifest, counter: "TokenCounter") -> tuple[Job, list[str], bool]:
    query, texts, truncate, raw_scores, return_text = parse_rerank(body)
    if not texts:
        raise ApiError(400, "`texts` cannot be empty", "Empty")
    if not manifest.is_reranker:
        raise ApiError(424, "model is not a re-ranker model (one logit over a text pair, built with --text-pair): "
                            "use /predict", "Backend")
    items: list[Item] = [(query, text) for text in texts]
    check_items(items, manifest)
    if truncate is False:
        counter.check(items)
    return Job(items, "none" if raw_scores else None), texts, return_text


def _tei_sorted(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest score first, as TEI orders (a stable ascending sort, then reversed: ties in reverse order)."""
    entries.sort(key=lambda entry: entry["score"])
    entries.reverse()
    return entries


def predict_answer(manifest: Manifest, rows: list[list[float]], batched: bool) -> Any:
    answers = [_tei_sorted([{"score": score, "label": label} for label, score in zip(manifest.labels, row)])
               for row in rows]
    return answers if batched else answers[0]


def rerank_answer(rows: list[list[float]], texts: list[str], return_text: bool) -> list[dict[str, Any]]:
    ranks = []
    for index, row in enumerate(rows):
        rank: dict[str, Any] = {"index": index, "score": row[0]}
        if return_text:
            rank["text"] = texts[index]
        ranks.append(rank)
    return _tei_sorted(ranks)


def info(manifest: Manifest, version: str, max_concurrent_requests: int) -> dict[str, Any]:
    id2label = {str(index): label for index, label in enumerate(manifest.labels)}
    label2id = {label: index for index, label in enumerate(manifest.labels)}
    kind = "reranker" if manifest.is_reranker else "classifier"
    return {
        "model_id": manifest.ensemble, "model_sha": None, "model_dtype": "float32",
        "served_model_name": manifest.ensemble, "model_type": {kind: {"id2label": id2label, "label2id": label2id}},
        "max_concurrent_requests": max_concurrent_requests, "max_input_length": manifest.max_sequence_length,
        "max_batch_tokens": manifest.max_sequence_length * manifest.max_batch_size,
        "max_batch_requests": manifest.max_batch_size, "max_client_batch_size": MAX_CLIENT_BATCH_SIZE,
        "auto_truncate": True, "tokenization_workers": 1, "version": version, "sha": None, "docker_label": None,
    }


class TokenCounter:
    """For truncate: false: the number of tokens of an item, by the served model's own tokenizer (loaded at the
    first such request with a text long enough to matter: a text of n UTF-8 bytes has at most n tokens)."""

    def __init__(self, repository: Path | None, max_length: int) -> None:
        self.path = repository / TOKENIZER if repository is not None else None
        self.max_length = max_length
        self.tokenizer: Any = None

    def _load(self) -> Any:
        if self.tokenizer is None:
            try:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(str(self.path))
            except Exception as error:  # ImportError, a missing or unreadable file
                raise ApiError(424, f"truncate: false cannot be checked: the model's tokenizer ({self.path}) cannot "
                                    f"be loaded ({error!r:.200}); send truncate: true", "Backend") from None
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self.tokenizer = tokenizer
        return self.tokenizer

    def check(self, items: list[Item]) -> None:
        """ApiError (422, TEI's words) for the first item over max_input_length tokens."""
        limit = self.max_length * MAX_CHAR_MULTIPLIER
        for text, pair in items:
            size = len(text.encode("utf-8")) + len((pair or "").encode("utf-8"))
            if size + SPECIAL_TOKENS_BOUND <= self.max_length:
                continue
            characters = len(text) + len(pair or "")
            if characters > limit:
                raise _invalid(f"`inputs` must have less than {limit} characters. Given: {characters}")
            count = len(self._load().encode(text, pair).ids) if pair else len(self._load().encode(text).ids)
            if count > self.max_length:
                raise _invalid(f"`inputs` must have less than {self.max_length} tokens. Given: {count}")
