"""Bad requests against the real local Triton serving a tiny BERT.

Odd but valid texts (empty, 1 MB, one 100,000-character word, control characters, emoji and other scripts)
get the tokens Hugging Face's tokenizer makes and PyTorch's probabilities. Malformed requests (bad UTF-8, too
many texts, wrong datatype or shape, missing or unknown input, unknown model, a body that is not JSON) get an
error that says what was wrong, and only the request that was wrong does: after every case the server is
ready, answers right, and no Python backend stub has died or been restarted.
"""
from __future__ import annotations

import http.client
import json
import queue
from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import Artifacts, assert_log_shows_no_crash, backend_stub_count, make_image
from local_triton import LocalTriton
from reference import labels_of, pytorch_probabilities
from traffic import stubs_of_group

MODEL_NAME = "ensemble_model"
MAX_BATCH_SIZE = 4  # make_triton_image.sh's default
# The README promises PyTorch's probabilities within 1e-4. The tiny random model's probabilities of different
# texts differ by only ~1e-5, so 1e-4 could not tell one text's answer from another's: ONNX Runtime matches
# PyTorch to ~1e-8 on it, and 1e-6 can.
TOLERANCE = 1e-6
NORMAL = ["where is my order", "помогите мне", "thank you very much", "the app crashes when I log in"]
ONE_MB = 1_000_000


def one_mb_of(unit: str) -> str:
    """`unit` repeated until it is at least 1 MB of UTF-8."""
    return unit * (ONE_MB // len(unit.encode()) + 1)


ODD_TEXTS = {
    "empty": "",
    "whitespace_only": " \t\n\r  \u00a0\u3000 ",
    "1MB_of_words": one_mb_of("I want a refund for this item "),
    "1MB_of_mixed_scripts": one_mb_of("where is мой заказ 我的订单 أين طلبي 🙂 "),
    "1MB_without_spaces": one_mb_of("x"),
    # Only a prefix of a long text is tokenized when that provably gives the same tokens (see text_preprocessing):
    "1MB_starting_with_a_5000_char_word": "y" * 5000 + one_mb_of(" where is my order"),  # not provable: whole
    "1MB_of_48_char_words": one_mb_of("q" * 48 + " "),  # the kept tokens end just before the prefix's end
    "100k_char_word": "a" * 100_000,
    "nul_and_control_chars": "a\x00b\x01c\x07 d\x1b[31m e\x7f f\u200b g\ufeff h\r\n\x00",
    "only_nul": "\x00" * 10,
    "emoji": "🙂🚀 👍🏽 👨‍👩‍👧 🇷🇺",
    "chinese": "我的订单在哪里",
    "arabic": "أين طلبي؟ شكرا",
    "mixed_scripts": "where is мой заказ 我的订单 أين 🙂 ok",
}


def readable(text: str) -> str:
    return text if len(text) < 40 else f"{text[:20]!r}...({len(text)} chars)"


@dataclass
class Served:
    artifacts: Artifacts
    server: LocalTriton
    max_length: int
    expected: dict[str, np.ndarray]  # text -> PyTorch probabilities
    tokenizer: object  # the Hugging Face tokenizer the model was trained with
    stubs: set[int]  # pids of the Python backend stubs when the server became ready

    def http(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.server.http_url, network_timeout=120, connection_timeout=120)

    def grpc(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.server.grpc_url)

    def check(self, texts: list[str], result) -> None:
        probabilities = result.as_numpy("probabilities")
        expected = np.stack([self.expected[text] for text in texts])
        np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE, rtol=0)
        labels = [value.decode() for value in result.as_numpy("label").reshape(-1)]
        assert labels == labels_of(expected, self.artifacts.labels())
        np.testing.assert_allclose(result.as_numpy("score").reshape(-1), expected.max(axis=1), atol=TOLERANCE, rtol=0)


def stub_pids(server: LocalTriton) -> set[int]:
    """The Python backend stubs of this server (its process group)."""
    return set(stubs_of_group(server.process.pid).values())


@pytest.fixture(scope="module")
def served(tiny_artifacts, serve, tmp_path_factory) -> Served:
    artifacts = tiny_artifacts("bert")
    build_dir = tmp_path_factory.mktemp("build-bad-requests")
    # A batch delay lets the dynamic batchers put concurrent good and bad requests into one execute.
    result = make_image(artifacts, build_dir, "--no-build", "--batch-delay-us", "5000")
    assert result.returncode == 0, result.stderr
    repository = build_dir / MODEL_NAME / "context" / "model_repository"
    server = serve(repository, build_dir / "server.log", build_dir)
    max_length = json.loads((artifacts.out_dir / "conversion_report.json").read_text())["max_sequence_length"]
    texts = NORMAL + list(ODD_TEXTS.values())
    expected = dict(zip(texts, pytorch_probabilities(artifacts.hf_dir, texts, max_length)))
    stubs = stub_pids(server)
    assert len(stubs) == backend_stub_count(repository) >= 3, stubs
    from transformers import AutoTokenizer

    return Served(artifacts, server, max_length, expected, AutoTokenizer.from_pretrained(artifacts.hf_dir), stubs)


def text_input(module, texts: list[str] | list[bytes], name: str = "text_input"):
    data = np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=np.object_)
    inp = module.InferInput(name, list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    return inp


def assert_still_serving(served: Served) -> None:
    """Ready, right answers over HTTP and gRPC, and the same stubs as at the start (none died or restarted)."""
    assert served.server.process.poll() is None, served.server.log_text()
    assert served.server.is_ready(), served.server.log_text()
    served.check(NORMAL, served.http().infer(MODEL_NAME, [text_input(httpclient, NORMAL)]))
    served.check(NORMAL[:1], served.grpc().infer(MODEL_NAME, [text_input(grpcclient, NORMAL[:1])]))
    assert stub_pids(served.server) == served.stubs, "a Python backend stub died or was restarted"


# --- odd but valid texts: answered like PyTorch ----------------------------------------------------------

@pytest.mark.parametrize("name", list(ODD_TEXTS))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_odd_text_gets_pytorchs_answer(served: Served, protocol: str, name: str) -> None:
    module, client = (httpclient, served.http()) if protocol == "http" else (grpcclient, served.grpc())
    text = ODD_TEXTS[name]
    served.check([text], client.infer(MODEL_NAME, [text_input(module, [text])]))
    assert_still_serving(served)


@pytest.mark.parametrize("name", list(ODD_TEXTS))
def test_odd_text_gets_hugging_faces_tokens(served: Served, name: str) -> None:
    """text_preprocessing (called directly) makes exactly the ids of the tokenizer the model was trained with."""
    text = ODD_TEXTS[name]
    expected = served.tokenizer([text], truncation=True, max_length=served.max_length)["input_ids"][0]
    result = served.http().infer("text_preprocessing", [text_input(httpclient, [text])])
    assert result.as_numpy("input_ids")[0].tolist() == expected, readable(text)


@pytest.mark.parametrize("batch", [
    [NORMAL[0], "empty", "100k_char_word", "emoji"],
    ["1MB_of_words", NORMAL[1], "nul_and_control_chars", "whitespace_only"],
    [NORMAL[2], "1MB_without_spaces", "mixed_scripts", NORMAL[3]],
], ids=["normal_empty_longword_emoji", "1MB_first", "1MB_in_the_middle"])
def test_batch_mixing_odd_and_normal_texts(served: Served, batch: list[str]) -> None:
    """Each text of one request gets its own right answer, in order, whatever its neighbours are."""
    batch = [ODD_TEXTS.get(name, name) for name in batch]
    for module, client in ((httpclient, served.http()), (grpcclient, served.grpc())):
        served.check(batch, client.infer(MODEL_NAME, [text_input(module, batch)]))
    assert_still_serving(served)


def test_normal_texts_are_told_apart(served: Served) -> None:
    """Guards the tolerance: a swapped or wrong answer for a normal text would fail `check`."""
    rows = np.stack([served.expected[text] for text in NORMAL + ["", ODD_TEXTS["1MB_of_words"]]])
    gaps = np.abs(rows[:, None] - rows[None]).max(axis=-1) + np.eye(len(rows))
    assert gaps.min() > 3 * TOLERANCE, gaps


def stats(served: Served, model: str) -> dict:
    return served.http().get_inference_statistics(model)["model_stats"][0]["inference_stats"]


def test_1mb_text_is_not_tokenized_whole(served: Served) -> None:
    """A text far beyond max_length costs text_preprocessing about what a short one does (only a prefix is
    tokenized), not the ~0.5 s of tokenizing 1 MB. Measured side by side: short and 1 MB requests alternate."""
    client = served.http()
    spent = {"short": 0, "1MB": 0}
    for _ in range(3):
        for kind, text in (("short", NORMAL[0]), ("1MB", ODD_TEXTS["1MB_of_words"])):
            before = stats(served, "text_preprocessing")["compute_infer"]["ns"]
            served.check([text], client.infer(MODEL_NAME, [text_input(httpclient, [text])]))
            spent[kind] += stats(served, "text_preprocessing")["compute_infer"]["ns"] - before
    print(f"text_preprocessing compute: 1 MB / short = {spent['1MB'] / spent['short']:.1f}")
    assert spent["1MB"] < 50 * spent["short"], spent


# --- malformed requests: an error that says what was wrong ------------------------------------------------

def typed_input(module, name: str, datatype: str, data: np.ndarray):
    inp = module.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    return inp


TEXT = np.array([[b"where is my order"]], dtype=np.object_)
# id -> (model, [(input name, datatype, data)], HTTP status, gRPC status, phrases the message must contain)
MALFORMED = {
    "invalid_utf8": (MODEL_NAME, [("text_input", "BYTES", np.array([[b"\xff\xfe abc"]], dtype=np.object_))],
                     400, "INVALID_ARGUMENT", ["text_input[0] is not valid UTF-8"]),
    "invalid_utf8_in_row_2": (MODEL_NAME, [("text_input", "BYTES", np.array(
        [[b"where is my order"], [b"ok"], [b"caf\xc3"], [b"fine"]], dtype=np.object_))],
        400, "INVALID_ARGUMENT", ["text_input[2] is not valid UTF-8"]),
    "more_texts_than_max_batch_size": (MODEL_NAME, [("text_input", "BYTES", np.repeat(TEXT, MAX_BATCH_SIZE + 1, 0))],
                                       400, "INVALID_ARGUMENT", [f"batch-size must be <= {MAX_BATCH_SIZE}"]),
    "datatype_INT32": (MODEL_NAME, [("text_input", "INT32", np.array([[5]], dtype=np.int32))],
                       400, "INVALID_ARGUMENT", ["data-type is 'INT32'", "expects 'BYTES'"]),
    "datatype_FP32": (MODEL_NAME, [("text_input", "FP32", np.array([[0.5]], dtype=np.float32))],
                      400, "INVALID_ARGUMENT", ["data-type is 'FP32'", "expects 'BYTES'"]),
    "shape_[1]": (MODEL_NAME, [("text_input", "BYTES", TEXT.reshape(1))],
                  400, "INVALID_ARGUMENT", ["unexpected shape for input 'text_input'", "Expected [-1,1], got [1]"]),
    "shape_[1,2]": (MODEL_NAME, [("text_input", "BYTES", np.repeat(TEXT, 2, 1))],
                    400, "INVALID_ARGUMENT", ["unexpected shape", "got [1,2]"]),
    "shape_[2,2]": (MODEL_NAME, [("text_input", "BYTES", np.repeat(np.repeat(TEXT, 2, 0), 2, 1))],
                    400, "INVALID_ARGUMENT", ["unexpected shape", "got [2,2]"]),
    "missing_input": (MODEL_NAME, [], 400, "INVALID_ARGUMENT", ["missing required input(s) ['text_input']"]),
    "unknown_input_name": (MODEL_NAME, [("text", "BYTES", TEXT)],
                           400, "INVALID_ARGUMENT", ["unexpected inference input 'text'"]),
    "extra_input": (MODEL_NAME, [("text_input", "BYTES", TEXT), ("text", "BYTES", TEXT)],
                    400, "INVALID_ARGUMENT", ["expected 1 inputs but got 2"]),
    "unknown_model": ("no_such_model", [("text_input", "BYTES", TEXT)],
                      404, "NOT_FOUND", ["unknown model: 'no_such_model'"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_malformed_request_gets_an_error_saying_why(served: Served, protocol: str, case: str) -> None:
    model, inputs, http_status, grpc_status, phrases = MALFORMED[case]
    module, client = (httpclient, served.http()) if protocol == "http" else (grpcclient, served.grpc())
    with pytest.raises(InferenceServerException) as raised:
        client.infer(model, [typed_input(module, *spec) for spec in inputs])
    error = raised.value
    assert error.status() == (str(http_status) if protocol == "http" else f"StatusCode.{grpc_status}"), error
    for phrase in phrases:
        assert phrase in error.message(), error.message()
    assert_still_serving(served)


def post(served: Served, body: bytes, model: str = MODEL_NAME) -> tuple[int, bytes, int]:
    """A raw POST: (status, body, length of the JSON header when binary outputs follow it, else 0)."""
    connection = http.client.HTTPConnection(served.server.http_url, timeout=30)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        header_length = int(response.getheader("Inference-Header-Content-Length") or 0)
        return response.status, response.read(), header_length
    finally:
        connection.close()


def json_body(data, datatype: str = "BYTES", shape: list[int] | None = None) -> bytes:
    return json.dumps({"inputs": [{"name": "text_input", "datatype": datatype, "shape": shape or [1, 1],
                                   "data": data}]}).encode()


# id -> (body, HTTP status, phrase of the error). A body that is not JSON, or JSON without an 'inputs' array, is refused
# by the gateway (400; Triton itself answered 500). What is inside the tensors is Triton's to judge; its 500s for a
# request that breaks the v2 schema are answered 400 by the gateway (issue 22, gateway/v2_schema.py).
RAW_MALFORMED = {
    "not_json": (b"where is my order", 400, "failed to parse the request JSON"),
    "binary_garbage": (b"\xff\xfe\x00\x01garbage", 400, "the request body is not UTF-8 JSON"),
    "truncated_json": (json_body(["where is my order"])[:40], 400, "failed to parse the request JSON"),
    "json_without_inputs": (b'{"texts": ["where is my order"]}', 400, "Unable to parse 'inputs'"),
    "json_array": (b'["where is my order"]', 400, "Unable to parse 'inputs'"),
    "number_as_text": (json_body([5]), 400, "each element of 'data' of a BYTES input must be a string"),
    "shape_says_2_texts_data_has_1": (json_body(["where is my order"], shape=[2, 1]), 400,
                                      "expected 2 string elements for inference input 'text_input'"),
}


@pytest.mark.parametrize("case", list(RAW_MALFORMED))
def test_raw_http_body_that_is_not_a_valid_request(served: Served, case: str) -> None:
    body, expected_status, phrase = RAW_MALFORMED[case]
    status, answer, _ = post(served, body)
    assert status == expected_status, (status, answer[:300])
    assert phrase in json.loads(answer)["error"], answer[:300]
    assert_still_serving(served)


def test_raw_http_request_is_answered_like_the_client_library(served: Served) -> None:
    """The raw POST path itself works: a hand-written JSON body gets the right answer as JSON."""
    status, answer, _ = post(served, json_body([NORMAL[1]]))
    assert status == 200, answer[:300]
    outputs = {output["name"]: output["data"] for output in json.loads(answer)["outputs"]}
    expected = served.expected[NORMAL[1]]
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=TOLERANCE, rtol=0)
    assert outputs["label"] == labels_of(expected[None], served.artifacts.labels())


def test_empty_http_body_is_a_raw_request_for_the_empty_text(served: Served) -> None:
    """Triton reads an empty body as a raw binary request whose one input is empty: the answer is the empty
    text's (documented here so that nobody mistakes it for an error path)."""
    status, answer, header_length = post(served, b"")
    assert status == 200 and header_length > 0, answer[:300]
    assert json.loads(answer[:header_length])["model_name"] == MODEL_NAME
    label = labels_of(served.expected[""][None], served.artifacts.labels())[0]
    assert answer.endswith(label.encode())
    assert_still_serving(served)


# --- bad requests in the same batch as good ones: only the bad one fails ----------------------------------

def infer_concurrently(served: Served, model: str, requests: list[list]) -> list[tuple[object, object]]:
    """All requests in flight at once (gRPC async); returns (result, error) in request order."""
    client = served.grpc()
    answers: "queue.Queue[tuple[int, object, object]]" = queue.Queue()
    for index, inputs in enumerate(requests):
        client.async_infer(model, inputs, partial(lambda i, result, error: answers.put((i, result, error)), index))
    received = dict((i, (result, error)) for i, result, error in (answers.get(timeout=60) for _ in requests))
    return [received[i] for i in range(len(requests))]


def counts(served: Served, model: str) -> np.ndarray:
    """(requests answered, successfully or not; executes) of `model` so far."""
    model_stats = served.http().get_inference_statistics(model)["model_stats"][0]
    inference = model_stats["inference_stats"]
    return np.array([inference["success"]["count"] + inference["fail"]["count"], model_stats["execution_count"]])


def assert_batched(served: Served, model: str, before: np.ndarray, sent: int) -> None:
    """The requests just sent to `model` shared executes with each other (else the test proves nothing)."""
    requests, executions = counts(served, model) - before
    assert requests == sent and executions < sent, (model, requests, executions)


def test_invalid_utf8_request_fails_alone_among_concurrent_good_ones(served: Served) -> None:
    texts = [NORMAL[i % len(NORMAL)] for i in range(15)]
    requests = [[text_input(grpcclient, [text])] for text in texts]
    bad_at = {3, 8}
    for index in sorted(bad_at):
        requests.insert(index, [text_input(grpcclient, [b"bad \xc3\x28 utf-8"])])
    before = counts(served, "text_preprocessing")
    answers = infer_concurrently(served, MODEL_NAME, requests)
    assert_batched(served, "text_preprocessing", before, len(requests))
    good = iter(texts)
    for index, (result, error) in enumerate(answers):
        if index in bad_at:
            assert result is None and error.status() == "StatusCode.INVALID_ARGUMENT", error
            assert "text_input[0] is not valid UTF-8" in error.message()
        else:
            assert error is None, error
            served.check([next(good)], result)
    assert_still_serving(served)


def onnx_inputs(ids: list[int]) -> list:
    array = np.array([ids], dtype=np.int64)
    return [typed_input(grpcclient, "input_ids", "INT64", array),
            typed_input(grpcclient, "attention_mask", "INT64", np.ones_like(array)),
            typed_input(grpcclient, "token_type_ids", "INT64", np.zeros_like(array))]


def test_bad_token_ids_sent_to_model_onnx_fail_alone(served: Served) -> None:
    """model_onnx is callable directly. Out-of-range token ids in one request of a batch fail that request only:
    the others of the same shape, batched with it into one ONNX Runtime run, are rerun and answered. (Before,
    the whole batch failed, and with two bad requests in it Triton 2.51 aborted.)"""
    good_ids, bad_ids = [2, 20, 21, 3], [2, 99_999, 21, 3]
    client = served.grpc()
    expected = client.infer("model_onnx", onnx_inputs(good_ids)).as_numpy("logits")
    requests = [onnx_inputs(bad_ids if index % 3 == 0 else good_ids) for index in range(12)]
    before = counts(served, "model_onnx")
    answers = infer_concurrently(served, "model_onnx", requests)
    assert_batched(served, "model_onnx", before, len(requests))
    for index, (result, error) in enumerate(answers):
        if index % 3 == 0:
            assert result is None and "indices element out of data bounds" in error.message(), error
        else:
            assert error is None, error
            np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-6, rtol=0)
    assert_still_serving(served)


@pytest.mark.parametrize("ids", [[2] * 100, []], ids=["longer_than_the_model_takes", "no_tokens"])
def test_token_ids_of_impossible_length_sent_to_model_onnx(served: Served, ids: list[int]) -> None:
    with pytest.raises(InferenceServerException, match="onnxruntime"):
        served.grpc().infer("model_onnx", onnx_inputs(ids))
    assert_still_serving(served)


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_logits_sent_to_post_processing_are_refused_not_labelled(served: Served, value: float) -> None:
    good = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    bad = good.copy()
    bad[0, 1] = value
    answers = infer_concurrently(served, "post_processing", [
        [typed_input(grpcclient, "logits", "FP32", logits)] for logits in (good, bad, good)])
    for index, (result, error) in enumerate(answers):
        if index == 1:
            assert result is None and "logits of row(s) [0] are not finite" in error.message(), error
        else:
            assert error is None, error
            np.testing.assert_allclose(result.as_numpy("probabilities")[0], np.exp(good[0]) / np.exp(good[0]).sum(),
                                       atol=1e-6)
    assert_still_serving(served)


def test_server_log_shows_no_crash(served: Served) -> None:
    """Runs last: nothing above made a stub or the server abort."""
    assert_log_shows_no_crash(served.server)
