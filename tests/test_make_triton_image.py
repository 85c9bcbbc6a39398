"""make_triton_image.sh refuses bad input before building anything, with a message naming the fix."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import Artifacts, make_image

NO_DOCKER = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent.sock"}


@pytest.fixture(scope="module")
def good(tiny_artifacts) -> Artifacts:
    return tiny_artifacts("bert")


@pytest.fixture
def broken(good: Artifacts, tmp_path: Path) -> Artifacts:
    """A private copy of the good artifacts for a test to break."""
    out = tmp_path / "converted"
    shutil.copytree(good.out_dir, out)
    return Artifacts(hf_dir=good.hf_dir, out_dir=out)


def assert_refused(result, *phrases: str, build_dir: Path) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    leftovers = list(build_dir.iterdir()) if build_dir.exists() else []
    assert leftovers == [], f"half-built files left behind: {leftovers}"


def onnx_with_inputs(path: Path, inputs: list[tuple[str, int, list]], num_labels: int = 4) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph_inputs = [helper.make_tensor_value_info(name, dtype, dims) for name, dtype, dims in inputs]
    cast = helper.make_node("Cast", [inputs[0][0]], ["as_float"], to=TensorProto.FLOAT)
    reduce = helper.make_node("ReduceMean", ["as_float"], ["mean"], keepdims=1)
    tile = helper.make_node("Expand", ["mean", "shape"], ["logits"])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, num_labels])
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_labels])
    graph = helper.make_graph([cast, reduce, tile], "g", graph_inputs, [output], initializer=[shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_good_artifacts_assemble(good: Artifacts, tmp_path: Path) -> None:
    result = make_image(good, tmp_path / "b", "--no-build")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b" / "ensemble_model" / "context" / "model_repository" / "ensemble_model").is_dir()


def test_missing_model_file(good: Artifacts, tmp_path: Path) -> None:
    bad = Artifacts(hf_dir=good.hf_dir, out_dir=tmp_path / "nothing")
    bad.out_dir.mkdir()
    shutil.copytree(good.tokenizer, bad.tokenizer)
    shutil.copy(good.id2label, bad.id2label)
    assert_refused(make_image(bad, tmp_path / "b"), "model: no such file", build_dir=tmp_path / "b")


def test_model_that_is_not_onnx(broken: Artifacts, tmp_path: Path) -> None:
    broken.model.write_text("not a model")
    assert_refused(make_image(broken, tmp_path / "b"), "is not an ONNX model", "convert_to_onnx.py",
                   build_dir=tmp_path / "b")


@pytest.mark.parametrize("inputs, phrase", [
    ([("input_ids", 7, ["b", "s"])], "needs ['input_ids', 'attention_mask']"),
    ([("input_ids", 1, ["b", "s"]), ("attention_mask", 7, ["b", "s"])], "input_ids must be int64"),
    ([("input_ids", 7, [1, 16]), ("attention_mask", 7, [1, 16])], "dynamic [batch, sequence]"),
    ([("input_ids", 7, ["b", "s"]), ("attention_mask", 7, ["b", "s"]), ("pixel_values", 1, ["b", 3])],
     "pixel_values"),
])
def test_onnx_inputs_that_do_not_fit(broken: Artifacts, tmp_path: Path, inputs, phrase: str) -> None:
    onnx_with_inputs(broken.model, inputs)
    assert_refused(make_image(broken, tmp_path / "b"), "model:", phrase, build_dir=tmp_path / "b")


def test_logits_disagree_with_id2label(broken: Artifacts, tmp_path: Path) -> None:
    labels = broken.labels()
    labels.pop(str(len(labels) - 1))
    broken.id2label.write_text(json.dumps(labels))
    assert_refused(make_image(broken, tmp_path / "b"), "logits have 4 classes but id2label names 3",
                   build_dir=tmp_path / "b")


@pytest.mark.parametrize("content, phrase", [
    ("{not json", "is not valid JSON"),
    ('["a", "b"]', "must be a non-empty JSON object"),
    ('{"0": "a", "2": "b", "3": "c", "4": "d"}', 'keys must be "0".."3"'),
    ('{"0": "a", "1": 5, "2": "c", "3": "d"}', "must be non-empty strings"),
])
def test_malformed_id2label(broken: Artifacts, tmp_path: Path, content: str, phrase: str) -> None:
    broken.id2label.write_text(content)
    assert_refused(make_image(broken, tmp_path / "b"), "id2label:", phrase, build_dir=tmp_path / "b")


def test_tokenizer_without_tokenizer_json(broken: Artifacts, tmp_path: Path) -> None:
    (broken.tokenizer / "tokenizer.json").unlink()
    assert_refused(make_image(broken, tmp_path / "b"), "tokenizer:", "holds no tokenizer.json",
                   build_dir=tmp_path / "b")


def test_model_whose_parity_was_never_checked(broken: Artifacts, tmp_path: Path) -> None:
    (broken.out_dir / "conversion_report.json").unlink()
    assert_refused(make_image(broken, tmp_path / "b"), "parity with PyTorch was never checked",
                   build_dir=tmp_path / "b")


def test_model_swapped_after_the_parity_check(broken: Artifacts, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(broken.model))
    model.doc_string = "edited after export"
    onnx.save(model, str(broken.model))
    assert hashlib.sha256(broken.model.read_bytes()).hexdigest() != json.loads(
        (broken.out_dir / "conversion_report.json").read_text())["model_sha256"]
    assert_refused(make_image(broken, tmp_path / "b"), "sha256 differs", build_dir=tmp_path / "b")


@pytest.mark.parametrize("args, phrase", [
    (["Bad Name"], "MODEL_NAME 'Bad Name' is not valid"),
    (["-leading"], "unknown option"),
    (["model_onnx"], "taken by a model of the ensemble"),
    (["ok", "bad:tag"], "TAG 'bad:tag' is not a valid Docker tag"),
    (["ok", "v1", "0"], "MAX_BATCH_SIZE must be an integer >= 1"),
    (["ok", "v1", "four"], "MAX_BATCH_SIZE must be an integer >= 1"),
    (["ok", "v1", "4", "extra"], "expected 3 to 6 arguments"),
    (["--model-instances", "0"], "--model-instances must be an integer >= 1"),
    (["--wheelhouse", "/nonexistent"], "holds no .whl files"),
    (["--no-model-metrics=yes"], "unknown option: --no-model-metrics=yes"),  # a switch: takes no value
])
def test_bad_arguments(good: Artifacts, tmp_path: Path, args: list[str], phrase: str) -> None:
    assert_refused(make_image(good, tmp_path / "b", *args), phrase, build_dir=tmp_path / "b")


def test_without_docker_engine_it_says_so_and_leaves_a_servable_repository(good: Artifacts, tmp_path: Path) -> None:
    result = make_image(good, tmp_path / "b", "intents", env=NO_DOCKER)
    assert result.returncode == 3, result.stderr
    assert "no Docker engine is reachable" in result.stderr
    assert "./serve_local.sh intents" in result.stderr
    assert (tmp_path / "b" / "intents" / "context" / "model_repository" / "intents" / "config.pbtxt").is_file()


def test_two_models_one_after_the_other_never_mix(tiny_artifacts, tmp_path: Path) -> None:
    bert, distilbert = tiny_artifacts("bert"), tiny_artifacts("distilbert")
    build = tmp_path / "b"
    assert make_image(bert, build, "--no-build", "same").returncode == 0
    result = make_image(distilbert, build, "--no-build", "same")
    assert result.returncode == 0, result.stderr
    repo = build / "same" / "context" / "model_repository"
    assert (repo / "model_onnx" / "1" / "model.onnx").read_bytes() == distilbert.model.read_bytes()
    assert "token_type_ids" not in (repo / "model_onnx" / "config.pbtxt").read_text()
    assert [p.name for p in build.iterdir()] == ["same"]
