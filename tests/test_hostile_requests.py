"""Hostile requests against the real local server (serve_local.sh: tritonserver 2.51 behind the gateway).

Each of these requests killed a bare Triton 2.51 (SIGFPE for top-k on a string output, SIGSEGV for
deep JSON and for a large form-urlencoded body, on every HTTP endpoint and on the metrics port). Here each gets a
right answer or the documented rejection (HTTP 413/400, gRPC RESOURCE_EXHAUSTED/INVALID_ARGUMENT), and right
after each the server still answers a normal request correctly over HTTP and gRPC with the same backend
processes. The module runs against any server LocalTriton starts: against the bare 2.51 it fails (see README).
"""
from __future__ import annotations

import gzip
import http.client
import json
import socket
import struct
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import SharedServer, assert_log_shows_no_crash
from local_triton import LocalTriton, descendants, process_rss
from traffic import stubs_of_group

MODEL = "ensemble_model"
MB = 1 << 20
MAX_BATCH_SIZE = 4  # make_triton_image.sh's default
LIMIT = MAX_BATCH_SIZE * 4 * MB + MB  # the gateway's default body limit for it (README: limits)
TEXT = "where is my order"


@dataclass
class Served:
    server: LocalTriton
    labels: list[str]
    stubs: set[int]
    expected_label: str


def stub_pids(server: LocalTriton) -> set[int]:
    return set(stubs_of_group(server.process.pid).values())


def grpc_text(texts: list[str]) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("text_input", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    return inp


@pytest.fixture(scope="module")
def served(default_bert: SharedServer) -> Served:
    """The session's default tiny BERT server (conftest's default_bert), its backend processes as they are now."""
    server, artifacts = default_bert.server, default_bert.artifacts
    label = grpcclient.InferenceServerClient(server.grpc_url).infer(MODEL, [grpc_text([TEXT])]).as_numpy("label")
    return Served(server, list(artifacts.labels().values()), stub_pids(server), label.reshape(-1)[0].decode())


def assert_still_serving(served: Served) -> None:
    """Alive, ready, the normal text's label over HTTP and gRPC, the same backend processes as at the start."""
    server = served.server
    assert server.process.poll() is None, f"the server died:\n{server.log_text()}"
    assert server.is_ready(), server.log_text()
    status, body = post(server.http_url, f"/v2/models/{MODEL}/infer", json_request([TEXT]))
    assert status == 200, body[:300]
    outputs = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    assert outputs["label"] == [served.expected_label]
    grpc_label = grpcclient.InferenceServerClient(server.grpc_url).infer(MODEL, [grpc_text([TEXT])]).as_numpy("label")
    assert grpc_label.reshape(-1)[0].decode() == served.expected_label
    assert stub_pids(server) == served.stubs, "a backend process died or was restarted"


def json_request(texts: list[str], outputs: list[dict] | None = None) -> bytes:
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}]}
    if outputs is not None:
        body["outputs"] = outputs
    return json.dumps(body, ensure_ascii=False).encode()


def post(address: str, path: str, body: bytes, content_type: str | None = "application/json",
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(address, timeout=120)
    try:
        connection.request("POST", path, body=body, headers={**({"Content-Type": content_type} if content_type
                                                                  else {}), **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def curl_post(address: str, path: str, body_file: Path, content_type: str,
              headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """As the README sends requests: curl, which asks `Expect: 100-continue` before a large body."""
    extra = [arg for key, value in (headers or {}).items() for arg in ("-H", f"{key}: {value}")]
    result = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", f"http://{address}{path}",
                             "-H", f"Content-Type: {content_type}", *extra, "--data-binary", f"@{body_file}"],
                            capture_output=True, timeout=300)
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status or 0), body


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


# --- top-k on every output ------------------------------------------------------------------------------------

@pytest.mark.parametrize("output", ["label", "score", "probabilities"])
def test_topk_over_http(served: Served, output: str) -> None:
    status, body = post(served.server.http_url, f"/v2/models/{MODEL}/infer",
                        json_request([TEXT], [{"name": output, "parameters": {"classification": 2}}]))
    if output == "label":
        assert status == 400, body[:300]
        assert "classification (top-k) is not supported for output 'label'" in error_of(body)
    else:
        assert status == 200, body[:300]
        values = json.loads(body)["outputs"][0]["data"]
        assert 1 <= len(values) <= 2 and all(v.count(":") >= 1 for v in values), values
    assert_still_serving(served)


@pytest.mark.parametrize("output", ["label", "score", "probabilities"])
def test_topk_over_grpc(served: Served, output: str) -> None:
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    requested = [grpcclient.InferRequestedOutput(output, class_count=2)]
    if output == "label":
        with pytest.raises(InferenceServerException) as raised:
            client.infer(MODEL, [grpc_text([TEXT])], outputs=requested)
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT", raised.value
        assert "not supported for output 'label'" in raised.value.message()
    else:
        values = client.infer(MODEL, [grpc_text([TEXT])], outputs=requested).as_numpy(output).reshape(-1)
        assert 1 <= len(values) <= 2 and all(b":" in v for v in values), values
    assert_still_serving(served)


def test_topk_on_a_composing_models_string_output(served: Served) -> None:
    """post_processing is callable directly: its label output is a string too."""
    logits = {"name": "logits", "datatype": "FP32", "shape": [1, len(served.labels)],
              "data": [0.1] * len(served.labels)}
    status, body = post(served.server.http_url, "/v2/models/post_processing/infer", json.dumps(
        {"inputs": [logits], "outputs": [{"name": "label", "parameters": {"classification": 1}}]}).encode())
    assert status == 400 and "output 'label' of model 'post_processing'" in error_of(body), body[:300]
    assert_still_serving(served)


def test_topk_in_a_grpc_stream_fails_that_request_only(served: Served) -> None:
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    answers: list = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        client.async_stream_infer(MODEL, [grpc_text([TEXT])],
                                  outputs=[grpcclient.InferRequestedOutput("label", class_count=2)], request_id="bad")
        client.async_stream_infer(MODEL, [grpc_text([TEXT])], request_id="good")
    finally:
        client.stop_stream()
    errors = [error for _, error in answers if error is not None]
    results = [result for result, error in answers if error is None]
    assert len(errors) == 1 and "not supported for output 'label'" in str(errors[0]), answers
    assert len(results) == 1 and results[0].as_numpy("label").reshape(-1)[0].decode() == served.expected_label
    assert_still_serving(served)


def test_duplicate_keys_cannot_smuggle_topk(served: Served) -> None:
    """Triton's parser takes the first of two equal keys, Python's the last: refused outright."""
    body = (b'{"inputs":[{"name":"text_input","datatype":"BYTES","shape":[1,1],"data":["hi"]}],'
            b'"outputs":[{"name":"label","name":"probabilities","parameters":{"classification":2}}]}')
    status, answer = post(served.server.http_url, f"/v2/models/{MODEL}/infer", body)
    assert status == 400 and "duplicate key 'name'" in error_of(answer), answer[:300]
    assert_still_serving(served)


# --- deep JSON ------------------------------------------------------------------------------------------------

def deep(levels: int) -> bytes:
    return (b'{"inputs":[{"name":"text_input","datatype":"BYTES","shape":[1,1],"data":' + b"[" * levels +
            b"]" * levels + b"}]}")


@pytest.mark.parametrize("levels", [1_000, 50_000, 500_000], ids=["1k", "50k", "500k"])
def test_deeply_nested_json(served: Served, levels: int) -> None:
    status, body = post(served.server.http_url, f"/v2/models/{MODEL}/infer", deep(levels))
    assert status == 400 and "nested deeper than 32 levels" in error_of(body), body[:300]
    assert_still_serving(served)


# The endpoints other than infer that parse a JSON body (a bare Triton dies on these bodies before even checking
# the admin key), and the metrics port.
OTHER_ENDPOINTS = ["/v2/repository/index", "/v2/logging", f"/v2/models/{MODEL}/generate",
                   "/v2/systemsharedmemory/register", "/v2/trace/setting"]


@pytest.mark.parametrize("path", OTHER_ENDPOINTS)
def test_deep_json_and_large_form_bodies_on_other_endpoints(served: Served, path: str, tmp_path: Path) -> None:
    status, body = post(served.server.http_url, path, b"[" * 50_000 + b"]" * 50_000)
    assert status == 400 and "nested deeper" in error_of(body), (path, body[:300])
    form = tmp_path / "form.json"
    form.write_bytes(json_request(["a " * (LIMIT // 2)]))  # over every limit, even the inference one
    status, body = curl_post(served.server.http_url, path, form, "application/x-www-form-urlencoded")
    assert status == 413 and "larger than" in error_of(body), (path, status, body[:300])
    assert_still_serving(served)


# The HF inference JSON and TEI routes: translations to the same v2 path, with the same limits.
API_ROUTES = ["/", f"/models/{MODEL}", "/predict", "/rerank"]


@pytest.mark.parametrize("path", API_ROUTES)
def test_deep_json_large_and_compressed_bodies_on_the_api_routes(served: Served, path: str, tmp_path: Path) -> None:
    status, body = post(served.server.http_url, path, b"[" * 50_000 + b"]" * 50_000)
    assert status in (400, 422) and "nested deeper" in error_of(body), (path, body[:300])
    form = tmp_path / "form.json"
    form.write_bytes(json.dumps({"inputs": "a " * (LIMIT // 2)}).encode())  # over the ensemble's body limit
    status, body = curl_post(served.server.http_url, path, form, "application/x-www-form-urlencoded")
    assert status == 413 and "larger than" in error_of(body), (path, status, body[:300])
    bomb = gzip.compress(json.dumps({"inputs": "a" * (LIMIT + MB)}).encode())
    status, body = post(served.server.http_url, path, bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413 and "decompressed" in error_of(body), (path, body[:300])
    status, body = post(served.server.http_url, path, b'{"inputs": "x", "inputs": "y"}')
    assert status in (400, 422) and "duplicate key" in error_of(body), (path, body[:300])
    assert_still_serving(served)


def test_metrics_port_serves_get_metrics_only(served: Served, tmp_path: Path) -> None:
    address = f"127.0.0.1:{served.server.metrics_port}"
    form = tmp_path / "form.json"
    form.write_bytes(json_request(["a " * (4 * MB)]))
    for path in ("/metrics", "/v2/models/stats"):
        status, body = curl_post(address, path, form, "application/x-www-form-urlencoded")
        assert status in (404, 405), (path, status, body[:200])
        status, body = post(address, path, b"[" * 50_000 + b"]" * 50_000)
        assert status in (404, 405), (path, status, body[:200])
    connection = http.client.HTTPConnection(address, timeout=30)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    assert response.status == 200 and b"nv_inference_request_success" in response.read()
    assert_still_serving(served)


# --- large bodies ---------------------------------------------------------------------------------------------

def binary_request(text: bytes) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1],
                                     "parameters": {"binary_data_size": len(text) + 4}}]}).encode()
    return header + struct.pack("<I", len(text)) + text, len(header)


@pytest.mark.parametrize("size_mb", [1, 4, 16, 64])
@pytest.mark.parametrize("kind", ["json", "form-urlencoded", "binary"])
def test_large_bodies_over_http(served: Served, kind: str, size_mb: int, tmp_path: Path) -> None:
    text = "a " * (size_mb * MB // 2)
    file = tmp_path / "body"
    headers = {}
    if kind == "binary":
        body, header_length = binary_request(text.encode())
        headers["Inference-Header-Content-Length"] = str(header_length)
        content_type = "application/octet-stream"
    else:
        body = json_request([text])
        content_type = "application/json" if kind == "json" else "application/x-www-form-urlencoded"
    file.write_bytes(body)
    status, answer = curl_post(served.server.http_url, f"/v2/models/{MODEL}/infer", file, content_type, headers)
    if len(body) > LIMIT:
        assert status == 413 and "larger than" in error_of(answer), (status, answer[:300])
    else:
        assert status == 200, answer[:300]
        assert {o["name"]: o["data"] for o in json.loads(answer)["outputs"]}["label"][0] in served.labels
    assert_still_serving(served)


@pytest.mark.parametrize("size_mb", [1, 4, 16, 64])
def test_large_requests_over_grpc(served: Served, size_mb: int) -> None:
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    text = "a " * (size_mb * MB // 2)
    if size_mb * MB > LIMIT:
        with pytest.raises(InferenceServerException) as raised:
            client.infer(MODEL, [grpc_text([text])])
        assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED", raised.value
    else:
        label = client.infer(MODEL, [grpc_text([text])]).as_numpy("label").reshape(-1)[0].decode()
        assert label in served.labels
    assert_still_serving(served)


def test_internal_model_gets_the_client_body_limit(served: Served, tmp_path: Path) -> None:
    """model_onnx's max_batch_size is the dynamic batcher's (INTERNAL_MAX_BATCH_SIZE, 64), not the clients' (4):
    a body over the ensemble's limit is refused at that limit on model_onnx's URL too (HTTP 413, gRPC
    RESOURCE_EXHAUSTED), the gRPC port takes no larger message, and a small request to model_onnx gets Triton's
    answer (200 or a 4xx), never a crash."""
    log = served.server.log_text()
    assert f"model_onnx {LIMIT / MB:.1f} MiB" in log and f"{MODEL} {LIMIT / MB:.1f} MiB" in log, \
        [line for line in log.splitlines() if "body limits" in line]
    tokens = LIMIT // 2  # two INT64 tensors of this many values: in JSON ("1, " each) 1.5 times the client limit
    body = tmp_path / "body"
    body.write_bytes(json.dumps({"inputs": [{"name": name, "datatype": "INT64", "shape": [1, tokens],
                                             "data": [1] * tokens} for name in ("input_ids", "attention_mask")]})
                     .encode())
    assert LIMIT < body.stat().st_size < 64 * LIMIT
    status, answer = curl_post(served.server.http_url, "/v2/models/model_onnx/infer", body, "application/json")
    assert status == 413 and "larger than" in error_of(answer), (status, answer[:300])
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    tokens = LIMIT // 8  # 8 bytes a value: twice the client limit in all
    inputs = []
    for name in ("input_ids", "attention_mask"):
        inputs.append(grpcclient.InferInput(name, [1, tokens], "INT64"))
        inputs[-1].set_data_from_numpy(np.ones((1, tokens), dtype=np.int64))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("model_onnx", inputs)
    assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED", raised.value
    small = {"inputs": [{"name": name, "datatype": "INT64", "shape": [1, 3], "data": [101, 7, 102]}
                        for name in ("input_ids", "attention_mask")]}
    status, answer = post(served.server.http_url, "/v2/models/model_onnx/infer", json.dumps(small).encode())
    assert status == 200 or 400 <= status < 500, (status, answer[:300])
    assert_still_serving(served)


# --- many large requests at once: the gateway holds at most its budget of bodies (gateway/budget.py) ------------

BUDGET = 64 * MB  # the gateway's default TRITONED_MAX_BYTES_IN_FLIGHT


def gateway_rss(server: LocalTriton) -> int:
    """Resident bytes of the gateway: serve_local.sh execs it (the server's own process), and its worker processes
    (the Python processes below it; the backend stubs are triton_python_backend_stub)."""
    found = process_rss(server.process.pid)
    assert found is not None and found[0].startswith("python"), f"no gateway at pid {server.process.pid}: {found}"
    workers = [info for info in map(process_rss, descendants(server.process.pid))
               if info is not None and info[0].startswith("python")]
    assert workers, "no gateway worker process"
    return found[1] + sum(rss for _, rss in workers)


def test_a_burst_of_the_largest_bodies_is_served_within_the_budget(served: Served) -> None:
    """24 requests of max_batch_size texts of ~4 MB at once over HTTP: all answered, while the gateway's memory
    grows by a few budgets at most (holding every body at once took ~27 MB each: 24 of them, ~650 MB)."""
    text = "where is my order " * (3_900_000 // 18)
    body = json_request([text] * MAX_BATCH_SIZE)
    assert BUDGET < 24 * len(body) and len(body) <= LIMIT
    before, peak, statuses, done = gateway_rss(served.server), 0, [], threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, gateway_rss(served.server))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(24) as pool:
        statuses = [status for status, _ in pool.map(
            lambda _: post(served.server.http_url, f"/v2/models/{MODEL}/infer", body), range(24))]
    done.set()
    sampler.join()
    print(f"\n24 x {len(body) / MB:.1f} MB at once: gateway RSS {before / MB:.0f} -> peak {peak / MB:.0f} MiB")
    assert statuses == [200] * 24, statuses
    assert peak - before < 5 * BUDGET, f"the gateway grew by {(peak - before) / MB:.0f} MiB"
    assert_still_serving(served)


def test_stalled_large_uploads_delay_no_small_request(served: Served) -> None:
    """Four clients announce a body of the largest size and stall after a few bytes, so they hold the whole budget
    and a fourth waits for it: small requests are still answered at once, over HTTP and gRPC."""
    stalled = []
    try:
        for _ in range(4):
            connection = socket.create_connection(tuple(served.server.http_url.rsplit(":", 1)), timeout=10)
            connection.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                               f"\r\nContent-Length: {LIMIT}\r\n\r\n{{".encode())
            stalled.append(connection)
        time.sleep(0.5)
        started = time.monotonic()
        status, answer = post(served.server.http_url, f"/v2/models/{MODEL}/infer", json_request([TEXT]))
        assert status == 200, answer[:300]
        client = grpcclient.InferenceServerClient(served.server.grpc_url)
        assert client.infer(MODEL, [grpc_text([TEXT])]).as_numpy("label").reshape(-1)[0].decode() == \
            served.expected_label
        assert time.monotonic() - started < 5, "a small request waited behind stalled uploads"
    finally:
        for connection in stalled:
            connection.close()
    assert_still_serving(served)


# --- what a client must not be able to do ---------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_are_inflated_with_a_bound(served: Served, encoding: str) -> None:
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    status, body = post(served.server.http_url, f"/v2/models/{MODEL}/infer", compress(json_request([TEXT])),
                        headers={"Content-Encoding": encoding})
    assert status == 200 and {o["name"]: o["data"] for o in json.loads(body)["outputs"]}["label"] == \
        [served.expected_label], body[:300]
    bomb = compress(json_request(["a" * (LIMIT + MB)]))  # 18 MB of text in ~20 KB
    assert len(bomb) < MB
    status, body = post(served.server.http_url, f"/v2/models/{MODEL}/infer", bomb,
                        headers={"Content-Encoding": encoding})
    assert status == 413 and "decompressed" in error_of(body), body[:300]
    assert_still_serving(served)


@pytest.mark.parametrize("value", ["abc", "-1", "99999999", "12 34"])
def test_bad_inference_header_length(served: Served, value: str) -> None:
    body, _ = binary_request(TEXT.encode())
    status, answer = post(served.server.http_url, f"/v2/models/{MODEL}/infer", body, "application/octet-stream",
                          {"Inference-Header-Content-Length": value})
    assert status == 400 and "Inference-Header-Content-Length" in error_of(answer), answer[:300]
    assert_still_serving(served)


def test_models_cannot_be_unloaded_or_loaded(served: Served) -> None:
    for action in ("unload", "load"):
        status, body = post(served.server.http_url, f"/v2/repository/models/{MODEL}/{action}", b"{}")
        assert status == 403 and "not allowed" in error_of(body), body[:300]
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    for call in (client.unload_model, client.load_model):
        with pytest.raises(InferenceServerException) as raised:
            call(MODEL)
        assert raised.value.status() == "StatusCode.PERMISSION_DENIED", raised.value
    assert httpclient.InferenceServerClient(served.server.http_url).is_model_ready(MODEL)
    assert_still_serving(served)


def test_server_log_shows_no_crash(served: Served) -> None:
    assert_log_shows_no_crash(served.server, extra=("Signal (11)", "Signal (8)", "Floating point exception"))
