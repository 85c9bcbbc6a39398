"""The request parameter `function_to_apply` ("softmax", "sigmoid" or "none"): a request that carries it is answered
with that function instead of the model's configured one, as transformers' pipeline answers with
`function_to_apply=...`; other requests of the same batch keep theirs; any other value is that request's
INVALID_ARG error and nothing else's. One multi-label model (sigmoid by default, with the output labels), served by
the real local Triton behind the gateway, over HTTP and gRPC; its batchers wait long enough that concurrent requests
meet in one post_processing execute."""
from __future__ import annotations

import json
import threading

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ServedModel, assert_log_shows_no_crash, bytes_input, http, serve_model
from reference import assert_answers, expected_outputs, pipeline_answers
from test_end_to_end import TEXTS

MODEL_NAME = "ensemble_model"
THRESHOLD = 0.45
TOLERANCE = 1e-4
FUNCTIONS = ("softmax", "sigmoid", "none")
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
BATCH_DELAY_US = 300_000  # concurrent requests meet in one batch of every model, post_processing's included
ITEMS = TEXTS[:4]
HOSTILE = ["SOFTMAX", "", "softmax ", "soft\nmax", "tanh", "x" * 10_000, 5, 0, True, False]


@pytest.fixture(scope="module")
def served(tiny_artifacts, serve, tmp_path_factory) -> ServedModel:
    options = ["--threshold", str(THRESHOLD), "--batch-delay-us", str(BATCH_DELAY_US), MODEL_NAME, "latest", "16"]
    return serve_model("multi_label", ITEMS, options, tiny_artifacts, serve, tmp_path_factory, threshold=THRESHOLD,
                       multi_label=True, tolerance=TOLERANCE)


@pytest.fixture(scope="module")
def expected(served: ServedModel) -> dict:
    """function -> item -> the pipeline's answer with that function_to_apply."""
    from bench.local_server import max_sequence_length

    length = max_sequence_length(served.repository)
    return {function: {item: expected_outputs(answer, served.artifacts.labels(), THRESHOLD) for item, answer in
                       zip(ITEMS, pipeline_answers(served.artifacts.hf_dir, ITEMS, length, function))}
            for function in FUNCTIONS}


def ask(served: ServedModel, protocol: str, items: list, parameters: dict | None = None):
    module = PROTOCOLS[protocol]
    inputs = [bytes_input(module, "text_input", items)]
    return served.client(protocol).infer(MODEL_NAME, inputs, parameters=parameters)


def test_the_functions_answer_differently(expected: dict) -> None:
    """Guards the tests below: were two functions' answers alike, a server that ignored the parameter would pass."""
    for item in ITEMS:
        values = [expected[function][item].values for function in FUNCTIONS]
        assert min(abs(a - b).max() for i, a in enumerate(values) for b in values[:i]) > 10 * TOLERANCE


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_request_gets_the_function_it_asks_for(served: ServedModel, expected: dict, protocol: str,
                                                 function: str) -> None:
    result = ask(served, protocol, ITEMS, {"function_to_apply": function})
    assert_answers(result, [expected[function][item] for item in ITEMS], TOLERANCE, multi_label=True)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_without_the_parameter_the_configured_function_answers(served: ServedModel, protocol: str) -> None:
    served.check(ITEMS, ask(served, protocol, ITEMS))


def run_together(calls: list) -> list:
    """Each call in its own thread, all at once: (result or exception) per call, in order."""
    outcomes: list = [None] * len(calls)

    def run(index: int) -> None:
        try:
            outcomes[index] = calls[index]()
        except InferenceServerException as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_one_batch_serves_each_request_its_own_function_and_refuses_a_hostile_one_alone(
        served: ServedModel, expected: dict, protocol: str) -> None:
    asked = [("softmax", ITEMS[0]), (None, ITEMS[1]), ("none", ITEMS[2]), ("tanh", ITEMS[3]),
             ("sigmoid", ITEMS[3])]
    before = served.server.stats()["post_processing"]
    outcomes = run_together([
        (lambda function=function, item=item: ask(served, protocol, [item],
                                                  {"function_to_apply": function} if function else None))
        for function, item in asked])
    after = served.server.stats()["post_processing"]
    executions = after["execution_count"] - before["execution_count"]
    assert executions < len(asked), f"the requests did not meet in one batch ({executions} executions)"
    for (function, item), outcome in zip(asked, outcomes):
        if function == "tanh":
            assert isinstance(outcome, InferenceServerException), outcome
            assert_refused(outcome, protocol, "tanh")
        else:
            assert not isinstance(outcome, Exception), outcome
            assert_answers(outcome, [expected[function or "sigmoid"][item]], TOLERANCE, multi_label=True)


def assert_refused(error: InferenceServerException, protocol: str, shown: str) -> None:
    assert error.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"), error
    message = error.message()
    assert "function_to_apply" in message and '"softmax", "sigmoid", "none"' in message and shown in message, message
    assert len(message) < 400, message  # a 10 kB value is not echoed whole


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_a_hostile_value_is_that_requests_error(served: ServedModel, protocol: str, value) -> None:
    with pytest.raises(InferenceServerException) as raised:
        ask(served, protocol, ITEMS[:2], {"function_to_apply": value})
    assert_refused(raised.value, protocol, repr(value)[:20])


@pytest.mark.parametrize("value", [None, ["softmax"], {"name": "softmax"}, 0.5])
def test_a_value_of_another_json_type_is_refused_over_http(served: ServedModel, value) -> None:
    body = {"parameters": {"function_to_apply": value},
            "inputs": [{"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": [ITEMS[0]]}]}
    status, answer = http(served.server.http_url, "POST", f"/v2/models/{MODEL_NAME}/infer", body)
    assert status == 400, answer
    assert "function_to_apply" in json.loads(answer)["error"] or "parameter" in json.loads(answer)["error"], answer


def test_the_server_survived(served: ServedModel, expected: dict) -> None:
    assert_answers(ask(served, "http", ITEMS, {"function_to_apply": "softmax"}),
                   [expected["softmax"][item] for item in ITEMS], TOLERANCE, multi_label=True)
    assert_log_shows_no_crash(served.server)
