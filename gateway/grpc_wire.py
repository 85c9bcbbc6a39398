"""What the gRPC front needs of a ModelInferRequest, read from its wire bytes without parsing the whole message:
the model's name and the outputs that ask for classification (top-k). A request of 8 MB of text is mostly
`inputs` and `raw_input_contents`, which are skipped, not copied into protobuf objects."""
from __future__ import annotations

from tritonclient.grpc import service_pb2

MODEL_NAME, OUTPUTS = 1, 6  # ModelInferRequest's field numbers (Triton's grpc_service.proto)
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class Unreadable(ValueError):
    """Not a well-formed protobuf message."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise Unreadable("truncated or overlong varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def scan(raw: bytes) -> tuple[str, list[str]]:
    """(model_name, names of the outputs whose `classification` parameter asks for top-k: any value but int 0)."""
    model, topk, at, end = "", [], 0, len(raw)
    while at < end:
        key, at = _varint(raw, at)
        field, kind = key >> 3, key & 7
        if kind == VARINT:
            _, at = _varint(raw, at)
        elif kind == FIXED64:
            at += 8
        elif kind == FIXED32:
            at += 4
        elif kind == LENGTH:
            size, at = _varint(raw, at)
            if at + size > end:
                raise Unreadable("a field runs past the end of the message")
            if field == MODEL_NAME:
                try:
                    model = raw[at:at + size].decode("utf-8")
                except UnicodeDecodeError:
                    raise Unreadable("model_name is not UTF-8") from None
            elif field == OUTPUTS:
                output = service_pb2.ModelInferRequest.InferRequestedOutputTensor.FromString(raw[at:at + size])
                choice = output.parameters["classification"].WhichOneof("parameter_choice") \
                    if "classification" in output.parameters else None
                if choice is not None and not (choice == "int64_param"
                                               and output.parameters["classification"].int64_param == 0):
                    topk.append(output.name)
            at += size
        else:
            raise Unreadable(f"wire type {kind} of field {field}")
        if field == 0:
            raise Unreadable("field number 0")
    if at != end:
        raise Unreadable("truncated message")
    return model, topk
