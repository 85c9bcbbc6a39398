"""The checks every request passes before Triton sees it, shared by the HTTP and the gRPC front: JSON that
Triton's parser would choke on or read differently (nesting depth, duplicate keys, not UTF-8), compressed bodies
(inflated with a bound), and top-k (`classification` / `class_count`) asked of a string output, which makes
Triton 2.51 die of SIGFPE."""
from __future__ import annotations

import json
import zlib
from typing import Any, Iterable

from .catalog import Model

_JSON_CONTAINERS = (dict, list)
STUB_FAILURE = "Stub process"  # how Triton 2.51 words a request failed by a dead Python backend stub (both fronts)
JSON = "application/json"


class Rejected(Exception):
    """A request refused before it reaches Triton: HTTP status, gRPC status code name, message."""

    def __init__(self, http_status: int, grpc_code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.message = message


def invalid(message: str) -> Rejected:
    return Rejected(400, "INVALID_ARGUMENT", message)


def too_large(what: str, limit: int) -> Rejected:
    return Rejected(413, "RESOURCE_EXHAUSTED",
                    f"{what} is larger than {limit} bytes, the limit of this server (see README: limits)")


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        # Triton's parser (RapidJSON) takes the first of two equal keys, Python's the last: both must agree.
        raise _DuplicateKey(f"duplicate key {duplicate!r} in a JSON object")
    return result


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), counted without recursion; stops past `limit`."""
    deepest = 0
    stack = [(value, 1)] if isinstance(value, _JSON_CONTAINERS) else []
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, _JSON_CONTAINERS))
    return deepest


def parse_json(data: bytes, max_depth: int) -> Any:
    """The parsed body, or Rejected (400) when it is not UTF-8 JSON, nests deeper than max_depth or repeats a key."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid(f"the request body is not UTF-8 JSON: {error}") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise invalid(f"the request JSON is nested deeper than {max_depth} levels") from None
    except _DuplicateKey as error:
        raise invalid(f"invalid request JSON: {error}") from None
    except ValueError as error:
        raise invalid(f"failed to parse the request JSON: {error}") from None
    if _depth(value, max_depth) > max_depth:
        raise invalid(f"the request JSON is nested deeper than {max_depth} levels")
    return value


def check_topk_names(model_name: str, model: Model | None, requested: Iterable[str]) -> None:
    """Rejected (400 / INVALID_ARGUMENT) when top-k is asked of a string output, or of any output of a model whose
    outputs are not known (it cannot be checked)."""
    for name in requested:
        if model is None:
            raise invalid(f"classification (top-k) asked of output '{name}' of model '{model_name}', whose outputs "
                          "are not known to this server")
        if name in model.string_outputs:
            raise invalid(f"classification (top-k) is not supported for output '{name}' of model '{model_name}': "
                          f"its datatype is BYTES (strings); ask it of a numeric output such as "
                          f"{sorted(t.name for t in model.outputs if t.name not in model.string_outputs) or '(none)'}")


def topk_outputs_of_json(request: Any) -> list[str]:
    """Names of the outputs of a KServe v2 JSON inference request that ask for classification (any value but 0)."""
    names = []
    outputs = request.get("outputs") if isinstance(request, dict) else None
    for output in outputs if isinstance(outputs, list) else []:
        parameters = output.get("parameters") if isinstance(output, dict) else None
        if isinstance(parameters, dict) and "classification" in parameters:
            value = parameters["classification"]
            if value == 0 and not isinstance(value, bool):
                continue
            names.append(str(output.get("name", "")))
    return names


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, inflated to at most `limit` bytes (Rejected otherwise: never a decompression bomb)."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as error:
        raise invalid(f"the {encoding} request body cannot be decompressed: {error}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise too_large(f"the decompressed {encoding} request body", limit)
    if not inflater.eof or inflater.unused_data:
        raise invalid(f"the {encoding} request body is truncated or has trailing data")
    return out
