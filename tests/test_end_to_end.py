"""A tiny classifier goes through make_triton_image.sh, is served by the real local Triton, and every
answer (HTTP, gRPC, curl from the README, batches, 64 concurrent requests) equals PyTorch's."""
from __future__ import annotations

import json
import queue
import re
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import ROOT, Artifacts, make_image
from reference import labels_of, pytorch_probabilities

MODEL_NAME = "ensemble_model"
TOLERANCE = 1e-4
TEXTS = [
    "помогите мне",
    "where is my order",
    "I want a refund for this item",
    "спасибо за помощь 🙂",
    "",
    "help " * 200,  # far beyond the tiny model's 64 positions: must be truncated, not rejected
]


def served_max_length(repository: Path) -> int:
    config = (repository / "text_preprocessing" / "config.pbtxt").read_text()
    return int(re.search(r'max_sequence_length".*?string_value: "(\d+)"', config).group(1))


class Served:
    def __init__(self, artifacts: Artifacts, server, repository: Path) -> None:
        self.artifacts = artifacts
        self.server = server
        self.repository = repository
        self.id2label = artifacts.labels()
        self.expected = pytorch_probabilities(artifacts.hf_dir, TEXTS, served_max_length(repository))

    def check(self, texts: list[str], labels: list[str], probabilities: np.ndarray, scores: np.ndarray) -> None:
        rows = [TEXTS.index(text) for text in texts]
        expected = self.expected[rows]
        np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE)
        assert labels == labels_of(expected, self.id2label)
        np.testing.assert_allclose(scores.reshape(-1), expected.max(axis=1), atol=TOLERANCE)


def text_input(texts: list[str]) -> httpclient.InferInput:
    inp = httpclient.InferInput("text_input", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    return inp


def http_infer(client: httpclient.InferenceServerClient, texts: list[str], model: str = MODEL_NAME):
    return client.infer(model, [text_input(texts)])


def decoded(result) -> tuple[list[str], np.ndarray, np.ndarray]:
    labels = [v.decode() for v in result.as_numpy("label").reshape(-1)]
    return labels, result.as_numpy("probabilities"), result.as_numpy("score")


@pytest.fixture(scope="module", params=["bert", "distilbert", "roberta", "xlm_roberta"])
def served(request, tiny_artifacts, serve, tmp_path_factory) -> Served:
    artifacts = tiny_artifacts(request.param)
    build_dir = tmp_path_factory.mktemp(f"build-{request.param}")
    # A batch delay gives the dynamic batchers time to combine the concurrent requests of the test below.
    result = make_image(artifacts, build_dir, "--no-build", "--batch-delay-us", "5000")
    assert result.returncode == 0, result.stderr
    repository = build_dir / MODEL_NAME / "context" / "model_repository"
    server = serve(repository, build_dir / "server.log", build_dir)
    return Served(artifacts, server, repository)


def test_answers_of_different_texts_differ_beyond_the_tolerance(served: Served) -> None:
    """Guards the other tests: were all texts' probabilities within TOLERANCE of each other, a server that
    swapped or repeated answers would pass them."""
    probabilities = served.expected[:-1]  # the last text repeats one word: kept out, it may look like another
    gaps = [np.abs(a - b).max() for i, a in enumerate(probabilities) for b in probabilities[:i]]
    assert min(gaps) > 10 * TOLERANCE, f"answers too alike to tell apart: min gap {min(gaps):.2e}"


def test_token_type_ids_only_when_the_model_takes_them(served: Served) -> None:
    import onnx

    takes = "token_type_ids" in {i.name for i in onnx.load(str(served.artifacts.model)).graph.input}
    for model in ("text_preprocessing", "model_onnx", MODEL_NAME):
        assert ("token_type_ids" in (served.repository / model / "config.pbtxt").read_text()) == takes


def test_http_single_texts(served: Served) -> None:
    client = httpclient.InferenceServerClient(served.server.http_url)
    for text in TEXTS:
        served.check([text], *decoded(http_infer(client, [text])))


def test_http_batch_in_one_request_keeps_order(served: Served) -> None:
    client = httpclient.InferenceServerClient(served.server.http_url)
    batch = [TEXTS[5], TEXTS[0], TEXTS[4], TEXTS[1]]  # max_batch_size 4, long text first
    served.check(batch, *decoded(http_infer(client, batch)))


def test_grpc(served: Served) -> None:
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    texts = TEXTS[:3]
    inp = grpcclient.InferInput("text_input", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    served.check(texts, *decoded(client.infer(MODEL_NAME, [inp])))


def readme_curl() -> str:
    lines = [line.strip() for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()]
    return next(line for line in lines if line.startswith("curl") and "/infer" in line)


def test_readme_curl_answers(served: Served) -> None:
    command = readme_curl().replace("localhost:8000", served.server.http_url)
    assert served.server.http_url in command, f"README curl does not use localhost:8000: {command}"
    output = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    body = json.loads(output.stdout)
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    text = json.loads(re.search(r"-d '(.*)'", command).group(1))["inputs"][0]["data"][0]
    served.check([text], outputs["label"], np.array([outputs["probabilities"]]), np.array(outputs["score"]))


def stats(client: httpclient.InferenceServerClient, model: str) -> dict:
    return client.get_inference_statistics(model)["model_stats"][0]


BATCHED_MODELS = ("text_preprocessing", "model_onnx", "post_processing")


def infer_concurrently(served: Served, texts: list[str]) -> dict[str, tuple[int, int]]:
    """Sends one request per text, all in flight at once (gRPC async: every request is sent before any answer
    is read), checks every answer, and returns {model: (inferences, executions)} for the requests sent."""
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    http = httpclient.InferenceServerClient(served.server.http_url)
    before = {model: stats(http, model) for model in BATCHED_MODELS}
    answers: "queue.Queue[tuple[int, object, object]]" = queue.Queue()
    for index, text in enumerate(texts):
        inp = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        client.async_infer(MODEL_NAME, [inp], partial(lambda i, result, error: answers.put((i, result, error)), index))
    for _ in texts:
        index, result, error = answers.get(timeout=60)
        assert error is None, error
        served.check([texts[index]], *decoded(result))
    counts = {}
    for model, old in before.items():
        new = stats(http, model)
        counts[model] = (new["inference_count"] - old["inference_count"],
                         new["execution_count"] - old["execution_count"])
    return counts


def test_64_concurrent_requests_are_batched_and_right(served: Served) -> None:
    """Mixed lengths: every model batches them, model_onnx too (allow_ragged_batch: its backend pads the texts of a
    batch by length buckets); each answer is still the pipeline's, whatever its neighbours."""
    counts = infer_concurrently(served, [TEXTS[i % len(TEXTS)] for i in range(64)])
    for model in BATCHED_MODELS:
        inferences, executions = counts[model]
        assert inferences == 64, (model, counts)
        assert executions <= inferences / 2, f"{model}: dynamic batching did not combine requests: {counts}"


def test_64_concurrent_requests_of_equal_length_are_batched_by_the_model(served: Served) -> None:
    counts = infer_concurrently(served, [TEXTS[1]] * 64)
    inferences, executions = counts["model_onnx"]
    assert inferences == 64, counts
    assert executions <= inferences / 2, f"model_onnx: dynamic batching did not combine requests: {counts}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_concurrent_requests_of_every_size_and_length_keep_their_answers(served: Served, protocol: str) -> None:
    """Requests of 1 to max_batch_size texts of mixed lengths (each request's own padding, the long text truncated),
    all in flight at once over one protocol: each text's answer equals the pipeline's (a batch padded by the backend
    must not change any text's logits) and comes back in its request's order."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [[TEXTS[(start + k) % len(TEXTS)] for k in range(size)] for start in range(len(TEXTS))
               for size in (1, 2, 3, 4)]

    def one(texts: list[str]):
        if protocol == "http":
            client = httpclient.InferenceServerClient(served.server.http_url)
            return decoded(http_infer(client, texts))
        client = grpcclient.InferenceServerClient(served.server.grpc_url)
        inp = grpcclient.InferInput("text_input", [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        return decoded(client.infer(MODEL_NAME, [inp]))

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        answers = list(pool.map(one, batches))
    for texts, answer in zip(batches, answers):
        served.check(texts, *answer)
