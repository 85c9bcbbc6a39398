"""A seeded campaign of malformed KServe v2 inference requests (the kinds issue 22 lists: wrong types, missing
members, odd shapes and datatypes, bad parameters, id and outputs, five content types) for HTTP, and malformed
ModelInferRequest messages for gRPC. Each request is built from a valid one by one or two random mutations, so
that it reaches the member being tested."""
from __future__ import annotations

import copy
import json
import random
from typing import Any, Iterator

CONTENT_TYPES = ("application/json", "application/octet-stream", "text/plain", "application/x-www-form-urlencoded",
                 None)  # None: no Content-Type header
ODD_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, 2 ** 70, "", "x", "1", [], [1], [[1]], {}, {"a": 1}, ["x"],
                         [None], [-1, 1], [1, -2], 1e308]
MEMBERS = ("name", "datatype", "shape", "data", "parameters")
DATATYPES = ("BYTES", "INT32", "FP32", "FP16", "BOOL", "UINT8", "INT64", "BF16", "bytes", "STRING", "", "FP64")


def valid_request(texts: list[str], with_pair: bool = False) -> dict[str, Any]:
    inputs = [{"name": "text_input", "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}]
    if with_pair:
        inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [len(texts), 1], "data": texts})
    return {"inputs": inputs}


def _mutate(request: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["input_member", "drop_member", "top", "outputs", "parameters", "id", "shape", "datatype",
                       "inputs"])
    odd = copy.deepcopy(rng.choice(ODD_VALUES))
    inputs = request.get("inputs")
    candidates = [item for item in inputs if isinstance(item, dict)] if isinstance(inputs, list) else []
    target = rng.choice(candidates) if candidates else {}  # a detached one when an earlier mutation broke them
    if kind == "input_member":
        target[rng.choice(MEMBERS)] = odd
    elif kind == "drop_member":
        target.pop(rng.choice(MEMBERS[:4]), None)
    elif kind == "top":
        request[rng.choice(["inputs", "outputs", "parameters", "id", "model_name", "extra"])] = odd
    elif kind == "outputs":
        output: dict[str, Any] = {"name": rng.choice(["label", "score", "probabilities", "nope", 1, None])}
        if rng.random() < 0.7:
            output["parameters"] = rng.choice([odd, {"classification": odd}, {"binary_data": odd},
                                               {"classification": rng.randint(-3, 9)}])
        request["outputs"] = rng.choice([[output], output, [output, output], [odd]])
    elif kind == "parameters":
        request["parameters"] = rng.choice([odd, {"sequence_id": odd}, {"priority": odd}, {"timeout": odd},
                                            {"binary_data_output": odd}, {"function_to_apply": odd},
                                            {"x": odd}, {"sequence_start": odd}])
        if rng.random() < 0.3:
            target["parameters"] = {"binary_data_size": odd}
    elif kind == "id":
        request["id"] = odd
    elif kind == "shape":
        target["shape"] = rng.choice([[rng.randint(-2, 3), rng.randint(-2, 3)], [rng.randint(0, 3)], [1, 1, 1],
                                      [2 ** 63], [1, "1"], odd])
    elif kind == "datatype":
        target["datatype"] = rng.choice(DATATYPES)
        if rng.random() < 0.5:
            target["data"] = rng.choice([[1], [[1]], [1.5], [True], ["x", 1], [[["x"]]], [{"a": 1}]])
    else:
        request["inputs"] = rng.choice([odd, [odd], [], [target, target], [{"name": "text_input"}]])
    return request


def http_campaign(seed: int, count: int, texts: list[str], with_pair: bool = False
                  ) -> Iterator[tuple[bytes, str | None]]:
    """(body, Content-Type) of `count` malformed requests: JSON mutated once or twice, a few not JSON at all."""
    rng = random.Random(seed)
    for _ in range(count):
        content_type = rng.choice(CONTENT_TYPES)
        roll = rng.random()
        if roll < 0.05:
            yield rng.choice([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"inputs": [', b"inputs=1&x=2",
                              b'{"inputs": []}']), content_type
            continue
        request = valid_request(rng.sample(texts, rng.randint(1, min(3, len(texts)))), with_pair)
        for _ in range(rng.randint(1, 2)):
            request = _mutate(request, rng)
        yield json.dumps(request, ensure_ascii=False).encode(), content_type


def grpc_campaign(seed: int, count: int, texts: list[str], model: str) -> Iterator[bytes]:
    """Serialized ModelInferRequest messages with odd datatypes, shapes, contents, parameters and outputs."""
    from tritonclient.grpc import service_pb2

    rng = random.Random(seed)
    for _ in range(count):
        request = service_pb2.ModelInferRequest(model_name=model, id=rng.choice(["", "x", "é" * 3]))
        rows = rng.sample(texts, rng.randint(1, min(3, len(texts))))
        tensor = request.inputs.add(name=rng.choice(["text_input"] * 4 + ["nope", ""]),
                                    datatype=rng.choice(DATATYPES[:6] + ("BYTES",) * 6))
        tensor.shape.extend(rng.choice([[len(rows), 1], [len(rows)], [-1, 1], [0, 1], [len(rows), 2], []]))
        kind = rng.choice(["contents", "raw", "raw_bad", "none", "both"])
        if kind in ("contents", "both"):
            tensor.contents.bytes_contents.extend(t.encode() for t in rows)
            if rng.random() < 0.3:
                tensor.contents.int_contents.extend([1, 2])
        if kind in ("raw", "both"):
            request.raw_input_contents.append(b"".join(len(t.encode()).to_bytes(4, "little") + t.encode()
                                                       for t in rows))
        if kind == "raw_bad":
            request.raw_input_contents.append(rng.choice([b"\xff\xff\xff\xff", b"\x01", b"", b"\x05\x00\x00\x00ab"]))
        if rng.random() < 0.3:
            output = request.outputs.add(name=rng.choice(["label", "score", "probabilities", "nope"]))
            choice = rng.choice(["int64_param", "string_param", "bool_param", "double_param"])
            value = {"int64_param": rng.randint(-3, 9), "string_param": "x", "bool_param": True,
                     "double_param": 1.5}[choice]
            setattr(output.parameters["classification"], choice, value)
        if rng.random() < 0.3:
            name = rng.choice(["sequence_id", "priority", "timeout", "function_to_apply", "binary_data_output"])
            choice = rng.choice(["int64_param", "string_param", "bool_param", "double_param", "uint64_param"])
            value = {"int64_param": rng.randint(-3, 9), "string_param": "x", "bool_param": True,
                     "double_param": 1.5, "uint64_param": 7}[choice]
            setattr(request.parameters[name], choice, value)
        yield request.SerializeToString()
