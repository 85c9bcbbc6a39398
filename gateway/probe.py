"""The end-to-end probe: one short text through a model (the ensemble), answered with a label. Used by the
supervisor (every few seconds, on Triton's internal port) and by `python -m gateway.healthcheck` (on the public
port). Standard library only: the health check must start fast."""
from __future__ import annotations

import json
from typing import Any

STRING_DATATYPE = "BYTES"
TEXT = "tritoned health probe"  # what the supervisor and the health check send
# A request parameter that the ensemble passes on to its models: the model metrics (model_repository/
# tritoned_metrics.py) do not count a request that carries it, so health probes never show up as traffic. Its one
# home: make_triton_image.sh renders it into the Python models' configs (parameter probe_parameter).
PROBE_PARAMETER = "tritoned_probe"


def request_body(metadata: dict[str, Any], text: str) -> bytes | None:
    """A JSON inference request that puts `text` into every input of the model described by `metadata`
    (Triton's model metadata), marked as a probe (PROBE_PARAMETER); None when the model has an input that is not
    a string (no text probes it)."""
    inputs = []
    for tensor in metadata.get("inputs", []):
        if tensor.get("datatype") != STRING_DATATYPE:
            return None
        shape = [1 if int(d) < 0 else int(d) for d in tensor.get("shape", [1])] or [1]
        count = 1
        for d in shape:
            count *= d
        inputs.append({"name": tensor["name"], "datatype": STRING_DATATYPE, "shape": shape, "data": [text] * count})
    return json.dumps({"parameters": {PROBE_PARAMETER: True}, "inputs": inputs}).encode() if inputs else None


def answer_problem(metadata: dict[str, Any], status: int, body: bytes) -> str | None:
    """None when a probe's answer is right: 200, every output of the model present, and a non-empty label when
    the model has an output named `label`. Otherwise what is wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:300].decode(errors='replace')}"
    try:
        outputs = {o["name"]: o.get("data") for o in json.loads(body)["outputs"]}
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable answer ({error}): {body[:200]!r}"
    expected = [t["name"] for t in metadata.get("outputs", [])]
    missing = [name for name in expected if name not in outputs]
    if missing:
        return f"outputs {missing} missing from the answer"
    if "label" in expected:
        label = outputs["label"]
        if not (isinstance(label, list) and label and isinstance(label[0], str) and label[0]):
            return f"no label in the answer: {label!r}"
    return None
