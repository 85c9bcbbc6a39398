"""The Hugging Face inference JSON and TEI's /predict, /rerank, /info (issue 22) against the real local server:
huggingface_hub's InferenceClient and plain HTTP requests written to TEI's OpenAPI schemas, every answer equal to
transformers' pipeline("text-classification") for the same input (truncated as served), TEI's answers and errors
validated against tests/schemas/tei.json (derived from TEI's docs/openapi.json); bad bodies get TEI's error shape
and a 4xx, and the server serves on. One server per kind of head: softmax, multi-label sigmoid, regression
(none), a one-logit pair model (a cross-encoder: /rerank)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import assert_log_shows_no_crash, make_image
from local_triton import LocalTriton
from tiny_models import CORPUS

MODEL = "ensemble_model"
TOLERANCE = 1e-4
SCHEMA = json.loads((Path(__file__).parent / "schemas" / "tei.json").read_text(encoding="utf-8"))
# kind (its pipeline function: softmax, sigmoid per label, none, sigmoid of one logit) -> make_triton_image.sh options
KINDS = {"bert": [], "multi_label": [], "regression": [], "reranker": ["--text-pair"]}
TEXTS = ["помогите мне", "where is my order", "I want a refund for this item", "", "help " * 200]


@dataclass
class Served:
    kind: str
    server: LocalTriton
    pipe: Any
    max_length: int
    labels: list[str]
    pairs: bool

    def pipeline(self, item: Any, **kwargs: Any) -> Any:
        return self.pipe(item, truncation=True, max_length=self.max_length, **kwargs)


@pytest.fixture(scope="module", params=list(KINDS))
def served(request, tiny_artifacts, serve, tmp_path_factory) -> Served:
    from transformers import pipeline

    from bench.local_server import max_sequence_length

    kind = request.param
    options = KINDS[kind]
    artifacts = tiny_artifacts(kind)
    build_dir = tmp_path_factory.mktemp(f"build-apis-{kind}")
    result = make_image(artifacts, build_dir, "--no-build", *options)
    assert result.returncode == 0, result.stderr
    repository = build_dir / MODEL / "context" / "model_repository"
    server = serve(repository, build_dir / "server.log", build_dir)
    pipe = pipeline("text-classification", model=str(artifacts.hf_dir), tokenizer=str(artifacts.hf_dir), device="cpu")
    return Served(kind, server, pipe, max_sequence_length(repository), list(artifacts.labels().values()),
                  "--text-pair" in options)


def call(served: Served, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://{served.server.http_url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def same(answer: list[dict], want: list[dict]) -> None:
    """The same labels in the same order, the same scores within the tolerance."""
    assert [entry["label"] for entry in answer] == [entry["label"] for entry in want], (answer, want)
    for got, expected in zip(answer, want):
        assert abs(got["score"] - expected["score"]) <= TOLERANCE, (answer, want)


def valid(value: Any, definition: str) -> None:
    jsonschema.validate(value, {**SCHEMA, "$ref": f"#/$defs/{definition}"})


def assert_serving(served: Served) -> None:
    status, answer = call(served, "POST", "/predict", {"inputs": TEXTS[1]})
    assert status == 200, answer
    same(answer, served.pipeline(TEXTS[1], top_k=None))
    assert served.server.process.poll() is None and served.server.is_ready()


# --- the Hugging Face inference JSON ----------------------------------------------------------------------------

def test_inference_client_answers_as_the_pipeline(served: Served) -> None:
    from huggingface_hub import InferenceClient

    for base in ("", f"/models/{MODEL}"):
        client = InferenceClient(base_url=f"http://{served.server.http_url}{base}")
        for text in TEXTS:
            same([vars(e) for e in client.text_classification(text)], served.pipeline(text))
            for top_k in (1, 2, len(served.labels) + 3):
                same([vars(e) for e in client.text_classification(text, top_k=top_k)],
                     served.pipeline(text, top_k=top_k))


def test_function_to_apply_is_the_pipelines(served: Served) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=f"http://{served.server.http_url}")
    for function in ("softmax", "sigmoid", "none"):
        same([vars(e) for e in client.text_classification(TEXTS[2], top_k=3, function_to_apply=function)],
             served.pipeline(TEXTS[2], top_k=3, function_to_apply=function))
        status, answer = call(served, "POST", "/", {"inputs": TEXTS[:2], "parameters": {"function_to_apply": function}})
        assert status == 200, answer
        for entry, text in zip(answer, TEXTS[:2]):
            same(entry, [served.pipeline(text, function_to_apply=function)[0]])


def test_hf_json_takes_lists_pairs_and_top_k_null(served: Served) -> None:
    status, answer = call(served, "POST", "/", {"inputs": TEXTS, "parameters": {"top_k": None}})
    assert status == 200, answer
    assert len(answer) == len(TEXTS)
    for entry, text in zip(answer, TEXTS):
        same(entry, served.pipeline(text, top_k=None))
    if served.pairs:
        pairs = [{"text": "where is my order", "text_pair": text} for text in TEXTS]
        status, answer = call(served, "POST", "/", {"inputs": pairs})
        assert status == 200, answer
        for entry, pair in zip(answer, pairs):
            same(entry, [served.pipeline(pair)])  # a pair alone: the pipeline answers the best label, not a list


# --- TEI ----------------------------------------------------------------------------------------------------------

def predict_requests(served: Served) -> list[tuple[dict, list]]:
    """(request, the items it holds: None for a single input) for every PredictInput shape and option."""
    single = [({"inputs": text}, None, text) for text in TEXTS[:2]]
    shapes = [({"inputs": [[TEXTS[0]], [TEXTS[1]], [TEXTS[4]]]}, [TEXTS[0], TEXTS[1], TEXTS[4]], None),
              ({"inputs": [[TEXTS[3]]]}, [TEXTS[3]], None)]
    if served.pairs:
        pair = {"text": TEXTS[1], "text_pair": TEXTS[0]}
        shapes += [({"inputs": [TEXTS[1], TEXTS[0]]}, None, pair),
                   ({"inputs": [[TEXTS[1], TEXTS[0]], [TEXTS[2]]]}, [pair, TEXTS[2]], None)]
    options = [{}, {"truncate": True}, {"truncate": None}, {"raw_scores": False}, {"truncation_direction": "Right"},
               {"truncation_direction": "Right", "truncate": True, "raw_scores": False}]
    return [({**request, **option}, batch, one) for request, batch, one in single + shapes for option in options]


def test_predict_every_request_shape(served: Served) -> None:
    for request, batch, one in predict_requests(served):
        valid(request, "PredictRequest")
        status, answer = call(served, "POST", "/predict", request)
        assert status == 200, (request, answer)
        valid(answer, "PredictResponse")
        if batch is None:
            same(answer, served.pipeline(one, top_k=None))
        else:
            assert len(answer) == len(batch)
            for entry, item in zip(answer, batch):
                same(entry, served.pipeline(item, top_k=None))


def test_predict_raw_scores_are_the_logits(served: Served) -> None:
    status, answer = call(served, "POST", "/predict", {"inputs": TEXTS[2], "raw_scores": True})
    assert status == 200, answer
    valid(answer, "PredictResponse")
    same(answer, served.pipeline(TEXTS[2], top_k=None, function_to_apply="none"))


def test_truncate_false_refuses_a_text_over_the_limit(served: Served) -> None:
    status, answer = call(served, "POST", "/predict", {"inputs": TEXTS[1], "truncate": False})
    assert status == 200, answer
    status, answer = call(served, "POST", "/predict", {"inputs": TEXTS[4], "truncate": False})
    assert status == 422, answer
    valid(answer, "ErrorResponse")
    assert answer["error_type"] == "Validation" and f"less than {served.max_length} tokens" in answer["error"]


def test_rerank_sorts_50_texts_as_the_pipeline_scores_them(served: Served) -> None:
    query = "where is my order"
    texts = [f"{a} {b}" for a in CORPUS[:10] for b in CORPUS[:5]][:50]
    request = {"query": query, "texts": texts, "return_text": True}
    status, answer = call(served, "POST", "/rerank", request)
    if not (served.pairs and len(served.labels) == 1):
        assert status == 424 and answer["error_type"] == "Backend", answer  # TEI: not a re-ranker model
        valid(answer, "ErrorResponse")
        return
    assert status == 200, answer
    valid(request, "RerankRequest")
    valid(answer, "RerankResponse")
    want = [served.pipeline({"text": query, "text_pair": text})["score"] for text in texts]
    assert sorted(rank["index"] for rank in answer) == list(range(50))
    for rank in answer:
        assert rank["text"] == texts[rank["index"]]
        assert abs(rank["score"] - want[rank["index"]]) <= TOLERANCE
    ordered = [want[rank["index"]] for rank in answer]
    assert all(a >= b - TOLERANCE for a, b in zip(ordered, ordered[1:])), "not sorted as the pipeline's scores"
    for options in ({}, {"truncate": True}, {"truncate": False}, {"raw_scores": False}, {"return_text": False},
                    {"truncation_direction": "Right"}):
        request = {"query": query, "texts": texts[:3], **options}
        valid(request, "RerankRequest")
        status, answer = call(served, "POST", "/rerank", request)
        assert status == 200 and all("text" not in rank for rank in answer), answer
        valid(answer, "RerankResponse")


def test_info_names_the_model_and_its_limits(served: Served) -> None:
    status, answer = call(served, "GET", "/info")
    assert status == 200, answer
    valid(answer, "Info")
    kind = "reranker" if served.pairs and len(served.labels) == 1 else "classifier"
    assert answer["model_type"][kind]["id2label"] == {str(i): label for i, label in enumerate(served.labels)}
    assert answer["max_input_length"] == served.max_length


BAD_BODIES = [
    ("/predict", {}, 422), ("/predict", {"inputs": []}, 422), ("/predict", {"inputs": 5}, 422),
    ("/predict", {"inputs": [["a", "b", "c"]]}, 422), ("/predict", {"inputs": [[1]]}, 422),
    ("/predict", {"inputs": ["a", "b", "c"]}, 422), ("/predict", {"inputs": "a", "raw_scores": "yes"}, 422),
    ("/predict", {"inputs": "a", "truncate": 1}, 422), ("/predict", {"inputs": "a", "truncation_direction": "up"}, 422),
    ("/predict", {"inputs": [["a"]] * 65}, 422),
    ("/predict", {"inputs": "a", "truncation_direction": "Left"}, 422),  # allowed by TEI; refused: right only ("/predict", [], 422), ("/predict", "text", 422),
    ("/rerank", {"query": "q"}, 422), ("/rerank", {"texts": ["a"]}, 422), ("/rerank", {"query": 1, "texts": ["a"]}, 422),
    ("/rerank", {"query": "q", "texts": "a"}, 422), ("/rerank", {"query": "q", "texts": []}, 400),
    ("/rerank", {"query": "q", "texts": [None]}, 422), ("/rerank", {"query": "q", "texts": ["a"], "return_text": 0}, 422),
]


def test_bad_tei_bodies_get_teis_error_and_a_4xx(served: Served) -> None:
    bodies = list(BAD_BODIES)
    if not served.pairs:
        bodies.append(("/predict", {"inputs": ["a", "b"]}, 422))  # a pair to a model of single texts
    if served.pairs and len(served.labels) == 1:
        bodies.append(("/rerank", {"query": "q", "texts": ["a"] * 65}, 422))  # over the batch limit
    for path, body, status_wanted in bodies:
        status, answer = call(served, "POST", path, body)
        if path == "/rerank" and status == 424:  # not a re-ranker: TEI checks the model before the batch
            assert not (served.pairs and len(served.labels) == 1)
            continue
        assert status == status_wanted, (path, body, status, answer)
        valid(answer, "ErrorResponse")
    for raw in (b"", b"{", b"\xff", b"null"):
        status, answer = call(served, "POST", "/predict", raw=raw)
        assert status == 422, (raw, answer)
        valid(answer, "ErrorResponse")
    assert_serving(served)


HF_BAD = [{}, {"inputs": 5}, {"inputs": []}, {"inputs": [1]}, {"inputs": {"text": 1}},
          {"inputs": "a", "parameters": {"top_k": -1}}, {"inputs": "a", "parameters": {"top_k": "2"}},
          {"inputs": "a", "parameters": {"function_to_apply": "tanh"}}, {"inputs": "a", "parameters": []},
          {"inputs": "a", "parameters": {"nope": 1}}, {"inputs": ["a"] * 65}]


def test_bad_hf_bodies_get_a_400(served: Served) -> None:
    bodies = HF_BAD + ([] if served.pairs else [{"inputs": {"text": "a", "text_pair": "b"}}])
    for body in bodies:
        status, answer = call(served, "POST", "/", body)
        assert status == 400 and isinstance(answer["error"], str), (body, status, answer)
    status, answer = call(served, "POST", "/models/another_model", {"inputs": "a"})
    assert status == 404 and MODEL in answer["error"], answer
    assert_serving(served)
    assert_log_shows_no_crash(served.server)
