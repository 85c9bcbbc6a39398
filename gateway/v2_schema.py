"""KServe v2 answers made right at the least cost per request, without a second parse of the request:
- Triton 2.51 answers a request that breaks the v2 schema (a member of the wrong type, a missing member, an
  odd shape) with 500 and its parser's words ("Unable to parse 'shape': attempt to access JSON
  non-unsigned-integer as unsigned-integer"). Those answers become 400 with a message that names the member and
  what was expected: only answers that are already errors are looked at, so a valid request pays nothing.
- Ensemble answers repeat sequence_id, sequence_start and sequence_end in the top-level "parameters" object: that
  object alone is rewritten with each key once; the rest of the answer (outputs, binary data) is left as it is."""
from __future__ import annotations

import json
import re

# Triton's HTTP front (src/http_server.cc, common/triton_json) words a schema error of the request so.
_SCHEMA_ERROR = re.compile(
    r"^(?:Unable to (?:parse|set) (?:'(?P<member>[^']*)'|(?P<what>[^:]+)): )?"
    r"(?:attempt to access JSON non-(?P<kind>[\w-]+) as [\w-]+"
    r"|attempt to access non-existing object member '(?P<missing>[^']*)'"
    r"|attempt to get members for non-object"
    r"|(?P<other>Shape does not match true shape of 'data' field))")
_CLIENT_ERROR_PREFIXES = ("Unable to parse", "Unable to set", "failed to get request params", "attempt to access")
_EXPECTED = {"string": "a string", "unsigned-integer": "a non-negative integer", "signed-integer": "an integer",
             "number": "a number", "boolean": "a boolean (true or false)", "array": "an array",
             "object": "an object"}
_PARAMETERS = b'"parameters":{'
_OUTPUTS = b'"outputs":['
_HEAD = 4096  # the top-level members before "outputs" fit in this (ids are short; Triton writes them first)
# What Triton 2.51 writes for an ensemble request without sequence parameters (nearly every one): replaced as is.
_SEQUENCE = b'"sequence_id":0,"sequence_start":false,"sequence_end":false'
_USUAL = _PARAMETERS + b",".join([_SEQUENCE] * 3) + b"}"
_USUAL_FIXED = _PARAMETERS + _SEQUENCE + b"}"
_PAIRS = json.JSONDecoder(object_pairs_hook=list)  # objects as their (key, value) lists: duplicates stay visible


def _explain(triton_message: str) -> str:
    """What a Triton parse error means for the client: the member and what it must be."""
    if triton_message.startswith("failed to get request params"):
        return f"invalid inference request: 'parameters' must be an object (Triton: {triton_message})"
    match = _SCHEMA_ERROR.match(triton_message)
    if match is None:
        return f"invalid inference request: {triton_message}"
    member = match.group("member") or match.group("what") or "request"
    if member == "JSON bytes array":
        return (f"invalid inference request: each element of 'data' of a BYTES input must be a string "
                f"(Triton: {triton_message})")
    if match.group("kind"):
        expected = _EXPECTED.get(match.group("kind"), match.group("kind"))
        return f"invalid inference request: '{member}' must be {expected} (Triton: {triton_message})"
    if match.group("missing") is not None:
        return (f"invalid inference request: member '{match.group('missing')}' is required in each of 'inputs' / "
                f"'outputs' (Triton: {triton_message})")
    if match.group("other"):
        return (f"invalid inference request: 'data' must hold exactly the elements 'shape' says, nested as the "
                f"shape or flat (Triton: {triton_message})")
    return f"invalid inference request: '{member}' must be an object (Triton: {triton_message})"


def client_error(status: int, data: bytes) -> tuple[int, bytes] | None:
    """(400, body) when Triton's 5xx answer `data` is its parser's refusal of a malformed request; None otherwise
    (a server fault stays a 5xx)."""
    if status < 500 or len(data) > 8192:
        return None
    try:
        message = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(message, str) or not message.startswith(_CLIENT_ERROR_PREFIXES):
        return None
    return 400, json.dumps({"error": _explain(message)}).encode()


def _first_key_wins(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def dedupe_parameters(data: bytes, header_length: int | None = None) -> tuple[bytes, int | None]:
    """The answer with its top-level "parameters" object holding each key once (and the new JSON header length
    of a binary answer); the answer itself when there is nothing to change."""
    end = min(header_length if header_length is not None else len(data), _HEAD)
    start = data.find(_PARAMETERS, 0, end)
    if start < 0:
        return data, header_length
    if data.startswith(_USUAL, start):  # only the top-level object can hold these keys
        out = data[:start] + _USUAL_FIXED + data[start + len(_USUAL):]
        return out, None if header_length is None else header_length - len(_USUAL) + len(_USUAL_FIXED)
    outputs = data.find(_OUTPUTS, 0, end)
    if 0 <= outputs < start:
        return data, header_length  # the first "parameters" belongs to an output: the answer has no top-level one
    opening = start + len(_PARAMETERS) - 1
    stop = outputs if outputs > start else end
    try:
        text = data[opening:stop].decode("utf-8")
        pairs, consumed = _PAIRS.raw_decode(text)
    except (UnicodeDecodeError, ValueError):
        return data, header_length
    if len({key for key, _ in pairs}) == len(pairs):
        return data, header_length
    fixed = json.dumps(_first_key_wins(pairs), separators=(",", ":")).encode()
    old_length = len(text[:consumed].encode("utf-8"))
    out = data[:opening] + fixed + data[opening + old_length:]
    return out, None if header_length is None else header_length + len(fixed) - old_length
