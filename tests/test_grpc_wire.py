"""gateway/grpc_wire.py: the model name and the top-k outputs read from a ModelInferRequest's bytes agree with what
protobuf's full parse says, for every kind of classification parameter; malformed bytes are refused, never read
differently from protobuf."""
from __future__ import annotations

import random

import pytest
from tritonclient.grpc import service_pb2

from gateway import grpc_wire

CHOICES = [None, ("int64_param", 0), ("int64_param", 2), ("bool_param", False), ("string_param", ""),
           ("double_param", 0.0), ("uint64_param", 0)]


def topk_by_protobuf(request: service_pb2.ModelInferRequest) -> list[str]:
    names = []
    for output in request.outputs:
        if "classification" not in output.parameters:
            continue
        choice = output.parameters["classification"].WhichOneof("parameter_choice")
        if choice is None or choice == "int64_param" and output.parameters["classification"].int64_param == 0:
            continue
        names.append(output.name)
    return names


def random_request(rng: random.Random) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=rng.choice(["ensemble_model", "m", "модель"]),
                                            model_version=rng.choice(["", "1"]), id=rng.choice(["", "abc"]))
    request.parameters["sequence_id"].int64_param = rng.randint(0, 9)
    for index in range(rng.randint(0, 3)):
        output = request.outputs.add(name=f"output_{index}")
        choice = rng.choice(CHOICES)
        if choice is not None:
            setattr(output.parameters["classification"], *choice)
        if rng.random() < 0.3:
            output.parameters["binary_data"].bool_param = True
    request.inputs.add(name="text_input", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(b"\x05\x00\x00\x00hello" * rng.randint(0, 100))
    return request


def test_agrees_with_protobuf_on_random_requests() -> None:
    rng = random.Random(20)
    for _ in range(500):
        request = random_request(rng)
        assert grpc_wire.scan(request.SerializeToString()) == (request.model_name, topk_by_protobuf(request))


def test_truncated_requests_are_refused_or_read_as_protobuf_reads_them() -> None:
    rng = random.Random(21)
    for _ in range(300):
        raw = random_request(rng).SerializeToString()
        cut = raw[:rng.randint(0, len(raw) - 1)]
        try:
            parsed = service_pb2.ModelInferRequest.FromString(cut)
        except Exception:
            parsed = None
        try:
            scanned = grpc_wire.scan(cut)
        except Exception:
            continue
        assert parsed is not None, f"accepted bytes protobuf refuses: {cut[-20:]!r}"
        assert scanned == (parsed.model_name, topk_by_protobuf(parsed))


@pytest.mark.parametrize("raw", [b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0a\x05ab", b"\x0b",
                                 b"\x0a\x02\xff\xfe", b"\x00\x01", b"\x08" + b"\xff" * 11])
def test_malformed_bytes_are_unreadable(raw: bytes) -> None:
    with pytest.raises(grpc_wire.Unreadable):
        grpc_wire.scan(raw)
