"""Every kind of head answers as transformers' text-classification pipeline (top_k=None) does: a regression head
(raw value), a single logit (sigmoid) and a multi-label head (sigmoid per label, and the labels that apply), each
built by make_triton_image.sh and served by the real local Triton, singly and in batches, over HTTP and gRPC, plus
top-k through Triton's classification extension. Single-label (softmax) models: tests/test_end_to_end.py."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import infer_items, serve_model
from conftest import ServedModel as Served
from test_end_to_end import TEXTS

MODEL_NAME = "ensemble_model"
TOLERANCE = 1e-4
THRESHOLD = 0.45  # the multi-label model is built with --threshold 0.45 (the default 0.5: test_make_triton_image)
# kind -> (the pipeline's function, outputs of the ensemble)
KINDS = {
    "regression": ("none", ["label", "score", "probabilities"]),
    "one_logit": ("sigmoid", ["label", "score", "probabilities"]),
    "multi_label": ("sigmoid", ["label", "score", "probabilities", "labels"]),
}
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module", params=list(KINDS))
def served(request, tiny_artifacts, serve, tmp_path_factory) -> Served:
    kind = request.param
    options = ["--threshold", str(THRESHOLD)] if kind == "multi_label" else []
    return serve_model(kind, TEXTS, options, tiny_artifacts, serve, tmp_path_factory, threshold=THRESHOLD,
                       multi_label="labels" in KINDS[kind][1], tolerance=TOLERANCE)


def test_the_converter_records_the_pipelines_function(served: Served) -> None:
    report = json.loads((served.artifacts.out_dir / "conversion_report.json").read_text())
    assert report["function_to_apply"] == KINDS[served.kind][0]
    config = (served.repository / "post_processing" / "config.pbtxt").read_text()
    assert f'key: "function_to_apply" value: {{ string_value: "{KINDS[served.kind][0]}" }}' in config


def test_answers_of_different_texts_differ_beyond_the_tolerance(served: Served) -> None:
    """Guards the other tests: were the texts' answers within TOLERANCE of each other, a server that swapped or
    repeated answers would pass them."""
    rows = [served.expected[text].values for text in TEXTS[:-1]]
    gaps = [np.abs(a - b).max() for i, a in enumerate(rows) for b in rows[:i]]
    assert min(gaps) > 10 * TOLERANCE, f"answers too alike to tell apart: min gap {min(gaps):.2e}"


def test_outputs_are_declared_by_kind(served: Served) -> None:
    metadata = served.client("http").get_model_metadata(MODEL_NAME)
    assert [output["name"] for output in metadata["outputs"]] == KINDS[served.kind][1]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_single_texts_and_a_batch_answer_like_the_pipeline(served: Served, protocol: str) -> None:
    client = served.client(protocol)
    for text in TEXTS:
        served.check([text], infer_items(PROTOCOLS[protocol], client, MODEL_NAME, [text]))
    batch = [TEXTS[5], TEXTS[0], TEXTS[4], TEXTS[3]]  # max_batch_size 4, the long text first
    served.check(batch, infer_items(PROTOCOLS[protocol], client, MODEL_NAME, batch))


def parse_classes(result, output: str) -> list[list[tuple[float, int, str]]]:
    """Triton's classification answers "value:index[:label]" per text."""
    rows = []
    for row in result.as_numpy(output):
        rows.append([])
        for entry in row:
            value, index, *label = entry.decode().split(":", 2)
            rows[-1].append((float(value), int(index), label[0] if label else ""))
    return rows


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_top_k_by_the_classification_extension(served: Served, protocol: str) -> None:
    """probabilities with class_count=K: the K highest values with their class ids and names (labels.txt); score
    (no label file) with class_count=1: its value and index 0."""
    module = PROTOCOLS[protocol]
    texts = TEXTS[:3]
    k = min(2, len(served.expected[texts[0]].values))
    result = infer_items(module, served.client(protocol), MODEL_NAME, texts, outputs=[
        module.InferRequestedOutput("probabilities", class_count=k),
        module.InferRequestedOutput("score", class_count=1)])
    id2label = served.artifacts.labels()
    for text, classes, (score,) in zip(texts, parse_classes(result, "probabilities"), parse_classes(result, "score")):
        want = served.expected[text]
        top = np.argsort(-want.values, kind="stable")[:k]
        assert [index for _, index, _ in classes] == top.tolist()
        assert [label for _, _, label in classes] == [id2label[str(index)] for index in top]
        np.testing.assert_allclose([value for value, _, _ in classes], want.values[top], atol=TOLERANCE)
        assert score[1:] == (0, "") and abs(score[0] - want.score) < TOLERANCE


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_top_k_on_a_bytes_output_is_refused(served: Served, protocol: str) -> None:
    module = PROTOCOLS[protocol]
    for name in [output for output in KINDS[served.kind][1] if output in ("label", "labels")]:
        with pytest.raises(InferenceServerException) as raised:
            infer_items(module, served.client(protocol), MODEL_NAME, TEXTS[:1],
                        outputs=[module.InferRequestedOutput(name, class_count=1)])
        assert raised.value.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"), raised.value
    served.check(TEXTS[:2], infer_items(module, served.client(protocol), MODEL_NAME, TEXTS[:2]))


def test_the_label_file_names_the_classes_in_id_order(served: Served) -> None:
    id2label = served.artifacts.labels()
    expected = "".join(f"{id2label[str(i)]}\n" for i in range(len(id2label)))
    for model in (MODEL_NAME, "post_processing"):
        assert (served.repository / model / "labels.txt").read_text(encoding="utf-8") == expected
        assert re.search(r'name: "probabilities".*label_filename: "labels.txt"',
                         (served.repository / model / "config.pbtxt").read_text())
