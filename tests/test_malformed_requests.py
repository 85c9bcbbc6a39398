"""A seeded campaign of malformed requests (tests/malformed.py: wrong types, missing members, odd shapes and
datatypes, bad parameters, ids and outputs, five content types) against the real local server: over HTTP to the
v2 infer route and to the HF and TEI routes, over gRPC as ModelInferRequest messages. None is answered with a 5xx
(a bare Triton 2.51 answers 500 to most of them) or a gRPC status other than INVALID_ARGUMENT / NOT_FOUND, a v2
schema error is named in its message, and afterwards the server answers right with the same backend processes.
Also: v2 answers of the ensemble carry each key of "parameters" once (JSON and binary answers)."""
from __future__ import annotations

import collections
import http.client
import json

import grpc
import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import SharedServer, assert_log_shows_no_crash, bytes_input
from malformed import http_campaign, grpc_campaign, valid_request
from traffic import stubs_of_group

MODEL = "ensemble_model"
TEXTS = ["where is my order", "помогите мне", "I want a refund for this item"]
SEED = 22
HTTP_COUNT = 400
GRPC_COUNT = 300
CLIENT_ERRORS = {"INVALID_ARGUMENT", "NOT_FOUND"}


@pytest.fixture(scope="module")
def served(default_bert: SharedServer):
    """The session's default tiny BERT server (conftest's default_bert), its label of TEXTS[0] and its backend
    processes as they are now."""
    server = default_bert.server
    return server, label_of(server), set(stubs_of_group(server.process.pid).values())


def label_of(server) -> str:
    client = httpclient.InferenceServerClient(server.http_url)
    answer = client.infer(MODEL, [bytes_input(httpclient, "text_input", [TEXTS[0]])])
    return answer.as_numpy("label").reshape(-1)[0].decode()


def post(address: str, path: str, body: bytes, content_type: str | None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(address, timeout=120)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type} if content_type else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def assert_serving_right(served) -> None:
    server, label, stubs = served
    assert server.process.poll() is None and server.is_ready(), server.log_tail()
    assert label_of(server) == label
    assert set(stubs_of_group(server.process.pid).values()) == stubs, "a backend process died or was restarted"


@pytest.mark.parametrize("path", [f"/v2/models/{MODEL}/infer", "/", "/predict", "/rerank"])
def test_no_malformed_http_request_gets_a_5xx(served, path: str) -> None:
    server = served[0]
    statuses: collections.Counter = collections.Counter()
    server_errors = []
    count = HTTP_COUNT if path.startswith("/v2") else HTTP_COUNT // 4
    for body, content_type in http_campaign(SEED, count, TEXTS):
        status, answer = post(server.http_url, path, body, content_type)
        statuses[status] += 1
        if status >= 500:
            server_errors.append((status, body[:200], answer[:300]))
        elif status >= 400:
            message = json.loads(answer)["error"]
            assert isinstance(message, str) and message, answer
            if "(Triton: Unable to parse '" in message:
                assert " must " in message or "is required" in message, message  # names what was expected
    assert not server_errors, (statuses, server_errors[:5])
    assert statuses[400] + statuses[422] > count // 2, statuses  # the campaign did reach the checks
    assert_serving_right(served)


def test_no_malformed_grpc_request_gets_a_server_error(served) -> None:
    server = served[0]
    channel = grpc.insecure_channel(server.grpc_url)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    codes: collections.Counter = collections.Counter()
    for raw in grpc_campaign(SEED, GRPC_COUNT, TEXTS, MODEL):
        try:
            infer(raw, timeout=120)
            codes["OK"] += 1
        except grpc.RpcError as error:
            codes[error.code().name] += 1
            assert error.code().name in CLIENT_ERRORS, (error.code(), error.details())
    channel.close()
    assert codes["INVALID_ARGUMENT"] > GRPC_COUNT // 2, codes
    assert_serving_right(served)


def keys_once(text: bytes) -> dict:
    def hook(pairs: list) -> dict:
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), f"duplicate keys {keys}"
        return dict(pairs)

    return json.loads(text, object_pairs_hook=hook)


def test_v2_answers_carry_each_key_once(served) -> None:
    server = served[0]
    status, answer = post(server.http_url, f"/v2/models/{MODEL}/infer",
                          json.dumps(valid_request(TEXTS)).encode(), "application/json")
    assert status == 200, answer
    parsed = keys_once(answer)
    assert set(parsed["parameters"]) >= {"sequence_id", "sequence_start", "sequence_end"}, parsed
    assert [output["name"] for output in parsed["outputs"]]
    # a binary answer: the JSON header's length follows the fix, the binary data is unchanged
    request = {**valid_request(TEXTS), "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    connection = http.client.HTTPConnection(server.http_url, timeout=120)
    connection.request("POST", f"/v2/models/{MODEL}/infer", body=json.dumps(request).encode(),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    raw, length = response.read(), int(response.getheader("Inference-Header-Content-Length"))
    connection.close()
    header = keys_once(raw[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(raw) - length == len(TEXTS) * 4 * 4
    probabilities = np.frombuffer(raw[length:], dtype=np.float32).reshape(len(TEXTS), 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert_log_shows_no_crash(server)
