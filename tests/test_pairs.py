"""Models of text pairs (NLI with a WordPiece and with a byte-level BPE template, a one-logit cross-encoder
reranker), built with make_triton_image.sh --text-pair and served by the real local Triton: every pair, alone and
in batches, over HTTP and gRPC, answers as transformers' pipeline("text-classification", top_k=None) does on
{"text", "text_pair"} (same template, longest-first truncation, token_type_ids), a 1 MB side included; top-k by
the classification extension; and every malformed pair request gets an error naming the problem while the
requests around it are served."""
from __future__ import annotations

import json
import queue
from functools import partial

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import assert_log_shows_no_crash, bytes_input, infer_items, serve_model
from conftest import ServedModel as Served
from reference import expected_outputs, pipeline_answers

MODEL_NAME = "ensemble_model"
TOLERANCE = 1e-4
KINDS = ["nli_bert", "nli_roberta", "reranker"]
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
LONG = "where is my order, I paid for it last week and nothing came " * 20  # ~ 4 x the 64 positions
ONE_MB = "I want a refund for this item " * 34_000
PAIRS = [
    ("where is my order", "the parcel was shipped yesterday"),
    ("помогите мне", "не могу войти в аккаунт"),
    ("спасибо 🙂", "thank you very much"),
    ("I want a refund for this item", ""),  # an empty text_pair is no pair, as for transformers
    ("", "where is my order"),
    (LONG, "short second side"),  # longest-first truncation: the long first side is cut
    ("short first side", LONG),
    (LONG, LONG + " and more"),  # both are cut
    (ONE_MB, "where is my order"),  # a 1 MB side: answered from a prefix of it, as if whole
]


@pytest.fixture(scope="module", params=KINDS)
def served(request, tiny_artifacts, serve, tmp_path_factory) -> Served:
    # A batch delay lets the dynamic batchers put concurrent good and bad requests into one execute.
    return serve_model(request.param, PAIRS, ["--text-pair", "--batch-delay-us", "5000"], tiny_artifacts, serve,
                       tmp_path_factory, tolerance=TOLERANCE)


def assert_still_serving(served: Served) -> None:
    assert served.server.process.poll() is None, served.server.log_text()
    assert served.server.is_ready(), served.server.log_text()
    served.check(PAIRS[:2], infer_items(httpclient, served.client("http"), MODEL_NAME, PAIRS[:2]))


def test_the_converter_proved_parity_on_pairs(served: Served) -> None:
    pairs = json.loads((served.artifacts.out_dir / "conversion_report.json").read_text())["pair_parity"]
    assert pairs["passed"] and pairs["probes"] == "text pairs" and pairs["tokenizer_mismatches"] == 0, pairs
    assert pairs["longest_sequence"] == 64  # probes were truncated


def test_answers_of_different_pairs_differ_beyond_the_tolerance(served: Served) -> None:
    """Guards the other tests: a server that swapped or repeated answers must fail them. A reranker answers one
    number per pair, so two of the nine pairs may land close together; any other mix-up of rows is still caught
    when at most one couple of pairs is within a few tolerances of each other."""
    rows = [served.expected[pair].values for pair in PAIRS]
    gaps = {(j, i): float(np.abs(a - b).max()) for i, a in enumerate(rows) for j, b in enumerate(rows[:i])}
    close = {couple: gap for couple, gap in gaps.items() if gap <= 10 * TOLERANCE}
    assert len(close) <= (1 if served.kind == "reranker" else 0), f"answers too alike to tell apart: {close}"
    assert min(gaps.values()) > TOLERANCE, f"two pairs' answers within the tolerance: {close}"


def test_an_empty_text_pair_is_the_text_alone(served: Served) -> None:
    """As transformers' tokenizer(text, "") and the pipeline: the answer of the first text by itself."""
    text = PAIRS[3][0]
    answer = pipeline_answers(served.artifacts.hf_dir, [text], 64)[0]
    np.testing.assert_allclose(expected_outputs(answer, served.artifacts.labels()).values,
                               served.expected[PAIRS[3]].values, atol=1e-6)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_pairs_alone_and_in_batches_answer_like_the_pipeline(served: Served, protocol: str) -> None:
    client = served.client(protocol)
    for pair in PAIRS:
        served.check([pair], infer_items(PROTOCOLS[protocol], client, MODEL_NAME, [pair]))
    for start in range(0, len(PAIRS), 4):  # max_batch_size 4
        batch = PAIRS[start:start + 4][::-1]
        served.check(batch, infer_items(PROTOCOLS[protocol], client, MODEL_NAME, batch))


def test_token_type_ids_are_the_templates(served: Served) -> None:
    """text_preprocessing (called directly) makes the ids and token types of the model's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(served.artifacts.hf_dir)
    result = infer_items(httpclient, served.client("http"), "text_preprocessing", [PAIRS[5]])
    expected = tokenizer(*PAIRS[5], truncation=True, max_length=64)
    assert result.as_numpy("input_ids")[0].tolist() == expected["input_ids"]
    if "token_type_ids" in (served.repository / "text_preprocessing" / "config.pbtxt").read_text():
        assert result.as_numpy("token_type_ids")[0].tolist() == expected["token_type_ids"]
        assert set(expected["token_type_ids"]) == {0, 1}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_top_k_by_the_classification_extension(served: Served, protocol: str) -> None:
    module = PROTOCOLS[protocol]
    k = len(served.artifacts.labels())
    result = infer_items(module, served.client(protocol), MODEL_NAME, PAIRS[:2],
                         outputs=[module.InferRequestedOutput("probabilities", class_count=k)])
    id2label = served.artifacts.labels()
    for pair, row in zip(PAIRS[:2], result.as_numpy("probabilities")):
        values = served.expected[pair].values
        order = np.argsort(-values, kind="stable")
        assert [entry.decode().split(":", 2)[1:] for entry in row] == [[str(i), id2label[str(i)]] for i in order]
        np.testing.assert_allclose([float(entry.decode().split(":")[0]) for entry in row], values[order],
                                   atol=TOLERANCE)


def stats(served: Served, model: str) -> dict:
    return served.client("http").get_inference_statistics(model)["model_stats"][0]


def test_a_1mb_side_is_not_tokenized_whole(served: Served) -> None:
    """A pair with a 1 MB side costs text_preprocessing about what a short pair does (a prefix of the side is
    tokenized), not the ~1 s of tokenizing 1 MB. Measured side by side: short and 1 MB pairs alternate."""
    client = served.client("http")
    spent = {"short": 0, "1MB": 0}
    for _ in range(3):
        for kind, pair in (("short", PAIRS[0]), ("1MB", PAIRS[-1]), ("1MB", PAIRS[-1][::-1])):
            before = stats(served, "text_preprocessing")["inference_stats"]["compute_infer"]["ns"]
            infer_items(httpclient, client, MODEL_NAME, [pair])
            spent[kind] += stats(served, "text_preprocessing")["inference_stats"]["compute_infer"]["ns"] - before
    print(f"text_preprocessing compute: 1 MB side / short pair = {spent['1MB'] / 2 / spent['short']:.1f} {spent}")
    assert spent["1MB"] / 2 < 50 * spent["short"], spent


# --- malformed pair requests: an error that says what was wrong ------------------------------------------

TEXT = ["where is my order"]
# id -> ([(input name, datatype, values)], HTTP status, gRPC status, phrases the message must contain)
MALFORMED = {
    "text_pair_count_differs": ([("text_input", TEXT * 2), ("text_pair", TEXT)],
                                ["batch size does not match other inputs"]),
    "text_pair_invalid_utf8": ([("text_input", TEXT * 2), ("text_pair", [b"ok", b"caf\xc3"])],
                               ["text_pair[1] is not valid UTF-8"]),
    "text_pair_missing": ([("text_input", TEXT)], ["missing required input(s) ['text_pair']"]),
    "text_pair_shape_[1,2]": ([("text_input", TEXT), ("text_pair", "shape [1,2]")],
                              ["unexpected shape for input 'text_pair'"]),
    "text_pair_datatype_INT32": ([("text_input", TEXT), ("text_pair", "INT32")],
                                 ["data-type is 'INT32'", "expects 'BYTES'"]),
}


def malformed_inputs(module, spec: list) -> list:
    inputs = []
    for name, values in spec:
        if values == "shape [1,2]":
            tensor = module.InferInput(name, [1, 2], "BYTES")
            tensor.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
        elif values == "INT32":
            tensor = module.InferInput(name, [1, 1], "INT32")
            tensor.set_data_from_numpy(np.array([[5]], dtype=np.int32))
        else:
            tensor = bytes_input(module, name, values)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_malformed_pair_request_gets_an_error_saying_why(served: Served, protocol: str, case: str) -> None:
    spec, phrases = MALFORMED[case]
    module = PROTOCOLS[protocol]
    with pytest.raises(InferenceServerException) as raised:
        served.client(protocol).infer(MODEL_NAME, malformed_inputs(module, spec))
    error = raised.value
    assert error.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"), error
    for phrase in phrases:
        assert phrase in error.message(), error.message()
    assert_still_serving(served)


def test_bad_pair_requests_fail_alone_among_concurrent_good_ones(served: Served) -> None:
    """Requests in flight together (gRPC async) share text_preprocessing's executes: the invalid UTF-8 one and
    the one whose counts differ get their errors, every other gets its own right answer."""
    client = served.client("grpc")
    good = [PAIRS[i % 3] for i in range(12)]
    requests: list[tuple[list, str | None]] = [(malformed_inputs(grpcclient, [("text_input", [a]), ("text_pair", [b])]),
                                                None) for a, b in good]
    requests.insert(3, (malformed_inputs(grpcclient, MALFORMED["text_pair_invalid_utf8"][0]), "not valid UTF-8"))
    requests.insert(8, (malformed_inputs(grpcclient, MALFORMED["text_pair_count_differs"][0]), "does not match"))
    before = stats(served, "text_preprocessing")
    answers: "queue.Queue[tuple[int, object, object]]" = queue.Queue()
    for index, (inputs, _) in enumerate(requests):
        client.async_infer(MODEL_NAME, inputs, partial(lambda i, result, error: answers.put((i, result, error)), index))
    received = dict((i, (result, error)) for i, result, error in (answers.get(timeout=60) for _ in requests))
    after = stats(served, "text_preprocessing")
    assert after["execution_count"] - before["execution_count"] < len(good), "the requests were not batched"
    pairs = iter(good)
    for index, (_, phrase) in enumerate(requests):
        result, error = received[index]
        if phrase:
            assert result is None and phrase in error.message(), error
        else:
            assert error is None, error
            served.check([next(pairs)], result)
    assert_still_serving(served)


def test_server_log_shows_no_crash(served: Served) -> None:
    """Runs last: nothing above made a stub or the server abort."""
    assert_log_shows_no_crash(served.server)
