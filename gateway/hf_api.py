"""The Hugging Face inference JSON (POST / and POST /models/{name}), as huggingface_hub's InferenceClient
(text_classification) posts it: {"inputs": ..., "parameters": {"top_k": k, "function_to_apply": f}}.

`inputs` is what transformers' pipeline("text-classification") takes: a text, a list of texts, a pair
{"text": ..., "text_pair": ...} or a list of pairs. The answer has one entry per input, each the list the pipeline
returns for that input with the same parameters: without top_k the best label alone ([{"label", "score"}]),
with top_k the best k, highest first, with "top_k": null every label. (The HF Inference API wraps a single input
so, and InferenceClient.text_classification returns the first entry.) Errors: {"error": message}, status 4xx."""
from __future__ import annotations

from typing import Any

from .classify import ApiError, Item, Job, check_function, check_items, ranked
from .manifest import Manifest

PARAMETERS = ("top_k", "function_to_apply")
UNSET = object()  # top_k absent: the pipeline's legacy answer, the best label only


def _item(value: Any, where: str) -> Item:
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and isinstance(value.get("text"), str) and set(value) <= {"text", "text_pair"}:
        pair = value.get("text_pair")
        if pair is None or isinstance(pair, str):
            return value["text"], pair
    raise ApiError(400, f"{where} must be a text or a pair {{\"text\": ..., \"text_pair\": ...}} of strings, got "
                        f"{type(value).__name__}")


def parse(body: Any, manifest: Manifest) -> tuple[Job, Any]:
    """(job, top_k or UNSET) of a request; ApiError(400) naming what is wrong."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise ApiError(400, 'the request must be a JSON object {"inputs": text or list of texts, "parameters": '
                            '{...}}')
    unknown = sorted(set(body) - {"inputs", "parameters", "options"})
    if unknown:
        raise ApiError(400, f"unknown member(s) {unknown}: the request has 'inputs' and optional 'parameters'")
    inputs = body["inputs"]
    items = [_item(value, f"inputs[{index}]") for index, value in enumerate(inputs)] if isinstance(inputs, list) \
        else [_item(inputs, "inputs")]
    parameters = body.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "'parameters' must be an object such as {\"top_k\": 2}")
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise ApiError(400, f"unknown parameter(s) {unknown}: text classification takes {list(PARAMETERS)}")
    top_k = parameters.get("top_k", UNSET)
    if top_k is not UNSET and top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)
                                                     or top_k < 0):
        raise ApiError(400, f"parameters.top_k must be a non-negative integer or null (every label), got {top_k!r:.80}")
    function = parameters.get("function_to_apply")
    if function is not None:
        function = check_function(function, "parameters.function_to_apply", manifest)
    try:
        check_items(items, manifest)
    except ApiError as error:
        raise ApiError(400, error.message) from None
    return Job(items, function), top_k


def answer(manifest: Manifest, rows: list[list[float]], top_k: Any) -> list[list[dict[str, Any]]]:
    """One list per input: the pipeline's answer to it (see the module's docstring)."""
    limit = 1 if top_k is UNSET else top_k
    return [ranked(manifest.labels, row, limit) for row in rows]
