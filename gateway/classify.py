"""The one translation the HF and TEI APIs share: texts (or pairs) to KServe v2 requests to the ensemble, at most
max_batch_size rows each, and the ensemble's `probabilities` back to one row of scores per item. Pure functions:
the sending (limits, supervisor retry) is the HTTP front's."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from .manifest import Manifest

Item = tuple[str, str | None]  # (text, text_pair or None)
FUNCTION_PARAMETER = "function_to_apply"  # the ensemble's per-request parameter (post_processing)
# Items one HF or TEI request may carry (TEI's max_client_batch_size, in /info); each is sent to the ensemble in
# requests of at most its max_batch_size rows, and the whole body stays within the ensemble's body limit.
MAX_CLIENT_BATCH_SIZE = 64


class ApiError(Exception):
    """A request an API refuses or could not answer: HTTP status, message, TEI's error type."""

    def __init__(self, status: int, message: str, error_type: str = "Validation") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


@dataclass(frozen=True)
class Job:
    """What an API asks of the ensemble: the items, and a function other than the configured one (or None)."""

    items: list[Item]
    function: str | None = None


def check_function(value: Any, where: str, manifest: Manifest) -> str:
    """A function_to_apply of a request: one of those the served post_processing applies (the manifest's)."""
    if not isinstance(value, str) or value.lower() not in manifest.functions:
        raise ApiError(400, f"{where} must be one of {', '.join(repr(f) for f in manifest.functions)}, "
                            f"got {value!r:.80}")
    return value.lower()


def check_items(items: list[Item], manifest: Manifest) -> None:
    """At least one item and at most MAX_CLIENT_BATCH_SIZE; a text pair given to a model of single texts is refused
    (a pair model takes single texts: no pair)."""
    if not items:
        raise ApiError(400, "the batch is empty: send at least one text", "Empty")
    if len(items) > MAX_CLIENT_BATCH_SIZE:
        raise ApiError(422, f"batch size {len(items)} > maximum allowed batch size {MAX_CLIENT_BATCH_SIZE}: split "
                            "the texts into several requests")
    if not manifest.takes_pairs and any(pair is not None for _, pair in items):
        raise ApiError(422, "this model classifies single texts, not text pairs: send each text alone (the model "
                            f"'{manifest.ensemble}' was built without --text-pair)")


def requests_of(job: Job, manifest: Manifest, batch: int) -> list[bytes]:
    """The v2 request bodies for a job: rows of at most `batch` items, only the probabilities asked for."""
    bodies = []
    outputs = [{"name": "probabilities", "parameters": {"binary_data": False}}]
    parameters = {FUNCTION_PARAMETER: job.function} if job.function is not None else None
    for start in range(0, len(job.items), max(1, batch)):
        chunk = job.items[start:start + max(1, batch)]
        inputs = [{"name": "text_input", "datatype": "BYTES", "shape": [len(chunk), 1],
                   "data": [text for text, _ in chunk]}]
        if manifest.takes_pairs:
            inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [len(chunk), 1],
                           "data": [pair or "" for _, pair in chunk]})
        body: dict[str, Any] = {"inputs": inputs, "outputs": outputs}
        if parameters:
            body["parameters"] = parameters
        bodies.append(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
    return bodies


def rows_of(answer: bytes, width: int) -> list[list[float]]:
    """The rows of scores in an ensemble answer (its `probabilities` output, `width` scores per row)."""
    try:
        outputs = json.loads(answer)["outputs"]
        data = next(output["data"] for output in outputs if output["name"] == "probabilities")
    except (ValueError, KeyError, TypeError, StopIteration) as error:
        raise ApiError(502, f"the ensemble's answer has no readable 'probabilities' output ({error!r:.120})",
                       "Backend") from None
    if width < 1 or len(data) % width:
        raise ApiError(502, f"the ensemble answered {len(data)} scores, not rows of {width} (one per label of "
                            "tritoned.json): the manifest does not match the served model", "Backend")
    return [list(data[start:start + width]) for start in range(0, len(data), width)]


def ranked(labels: Sequence[str], row: Sequence[float], top_k: int | None = None) -> list[dict[str, Any]]:
    """{label, score} for each label, highest score first (ties: label order, as Python's stable sort leaves
    them, the pipeline's sort too), the first top_k."""
    order = sorted(range(len(row)), key=lambda index: row[index], reverse=True)
    if top_k is not None:
        order = order[:top_k]
    return [{"label": labels[index], "score": row[index]} for index in order]


def error_message(data: bytes) -> str:
    try:
        message = json.loads(data).get("error")
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) else data[:300].decode("utf-8", "replace")
