"""make_triton_image.sh refuses bad input before building anything, with a message naming the fix."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Artifacts, make_image, run

NO_DOCKER = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent.sock"}
CONVERT_FIRST = "MODEL is the model.onnx file that utils/convert_to_onnx.py writes"


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
    assert_refused(make_image(bad, tmp_path / "b"), "model: no such file", CONVERT_FIRST, build_dir=tmp_path / "b")


def make_with(build_dir: Path, model: Path, tokenizer: Path, id2label: Path):
    """./make_triton_image.sh --no-build MODEL TOKENIZER ID2LABEL, any three paths."""
    return run([str(ROOT / "make_triton_image.sh"), "--no-build", str(model), str(tokenizer), str(id2label)],
               env={**os.environ, "TRITONED_BUILD_DIR": str(build_dir), "TRITONED_PYTHON": sys.executable})


def test_checkpoint_directory_as_model_says_convert_first(good: Artifacts, tmp_path: Path) -> None:
    """A newcomer's first try: the Hugging Face checkpoint directory as MODEL, whatever the other two are."""
    result = make_with(tmp_path / "b", good.hf_dir, tmp_path / "tok", tmp_path / "id2label")
    assert_refused(result, f"model: {good.hf_dir} is a directory (a Hugging Face checkpoint", CONVERT_FIRST,
                   f"utils/convert_to_onnx.py --model {good.hf_dir} --output-dir build/artifacts",
                   "then pass build/artifacts/model.onnx build/artifacts/tokenizer build/artifacts/id2label.json",
                   build_dir=tmp_path / "b")
    assert "no such file" not in result.stderr


@pytest.mark.parametrize("which, phrases", [
    ("model=out", ["is a directory", CONVERT_FIRST, "pass {out}/model.onnx"]),
    ("model=empty", ["model: {empty} is a directory, not a file", CONVERT_FIRST,
                     "convert_to_onnx.py --model CHECKPOINT_DIR --output-dir build/artifacts"]),
    ("tokenizer=config", ["tokenizer: {out}/tokenizer/tokenizer_config.json is a file, not tokenizer.json",
                          "pass the directory that holds it and tokenizer.json: {out}/tokenizer"]),
    ("tokenizer=out", ["tokenizer: {out} holds no tokenizer.json", "pass its tokenizer/ directory: {out}/tokenizer"]),
    ("tokenizer=slow", ["tokenizer: {slow} holds no tokenizer.json", "slow tokenizer only",
                        "utils/convert_to_onnx.py converts it"]),
    ("tokenizer=missing", ["tokenizer: no such directory: {missing}"]),
    ("id2label=out", ["id2label: {out} is a directory, not a JSON file", "pass the file in it: {out}/id2label.json"]),
    ("id2label=empty", ["id2label: {empty} is a directory, not a JSON file", "utils/convert_to_onnx.py writes"]),
])
def test_wrong_kind_of_path_is_named_with_the_fix(good: Artifacts, tmp_path: Path, which: str,
                                                  phrases: list[str]) -> None:
    places = {"out": good.out_dir, "empty": tmp_path / "empty", "slow": tmp_path / "slow", "missing": tmp_path / "no",
              "config": good.tokenizer / "tokenizer_config.json"}
    places["empty"].mkdir()
    places["slow"].mkdir()
    (places["slow"] / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    paths = {"model": good.model, "tokenizer": good.tokenizer, "id2label": good.id2label}
    argument, place = which.split("=")
    paths[argument] = places[place]
    result = make_with(tmp_path / "b", paths["model"], paths["tokenizer"], paths["id2label"])
    assert_refused(result, *(phrase.format(**places) for phrase in phrases), build_dir=tmp_path / "b")


def test_tokenizer_json_itself_is_accepted(good: Artifacts, tmp_path: Path) -> None:
    result = make_with(tmp_path / "b", good.model, good.tokenizer / "tokenizer.json", good.id2label)
    assert result.returncode == 0, result.stderr
    served = tmp_path / "b" / "ensemble_model" / "context" / "model_repository" / "text_preprocessing" / "1"
    assert (served / "tokenizer" / "tokenizer.json").read_bytes() == (good.tokenizer / "tokenizer.json").read_bytes()


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
    (["artifacts"], "MODEL_NAME 'artifacts' is reserved: the model would replace build/artifacts/"),
    (["demo"], "MODEL_NAME 'demo' is reserved"),
    (["ok", "bad:tag"], "TAG 'bad:tag' is not a valid Docker tag"),
    (["ok", "v1", "0"], "MAX_BATCH_SIZE must be an integer >= 1"),
    (["ok", "v1", "four"], "MAX_BATCH_SIZE must be an integer >= 1"),
    (["ok", "v1", "4", "extra"], "expected 3 to 6 arguments"),
    (["--model-instances", "0"], "--model-instances must be an integer >= 1"),
    (["--ort-threads", "automatic"], "--ort-threads must be an integer >= 0"),
    (["--batch-delay-us", "-5"], "--batch-delay-us must be an integer >= 0"),
    (["--busy-ort-threads", "one"], "--busy-ort-threads must be an integer >= 0"),
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


# --- heads and pairs: --function, --threshold, --text-pair, label names ------------------------------------

def rendered(build_dir: Path, model: str, name: str = "ensemble_model") -> str:
    return (build_dir / name / "context" / "model_repository" / model / "config.pbtxt").read_text()


def edit_report(artifacts: Artifacts, change) -> None:
    path = artifacts.out_dir / "conversion_report.json"
    report = json.loads(path.read_text())
    change(report)
    path.write_text(json.dumps(report))


@pytest.mark.parametrize("args, phrase", [
    (["--function", "relu"], "--function must be softmax, sigmoid or none, got 'relu'"),
    (["--function", "Softmax"], "--function must be softmax, sigmoid or none, got 'Softmax'"),
    (["--threshold", "1.5"], "--threshold must be a number from 0 to 1 (e.g. 0.5), got '1.5'"),
    (["--threshold", "-0.1"], "--threshold must be a number from 0 to 1"),
    (["--threshold", "half"], "--threshold must be a number from 0 to 1"),
    (["--threshold", "0.5.1"], "--threshold must be a number from 0 to 1"),
    (["--threshold", "nan"], "--threshold must be a number from 0 to 1"),
    (["--threshold"], "option --threshold needs a value"),
    (["--function"], "option --function needs a value"),
])
def test_bad_head_options(good: Artifacts, tmp_path: Path, args: list[str], phrase: str) -> None:
    assert_refused(make_image(good, tmp_path / "b", *args), phrase, build_dir=tmp_path / "b")


def test_threshold_on_a_model_that_is_not_multi_label(good: Artifacts, tmp_path: Path) -> None:
    assert_refused(make_image(good, tmp_path / "b", "--threshold", "0.3"),
                   "--threshold applies to multi-label models only", "softmax over 4 label(s)",
                   build_dir=tmp_path / "b")


def test_sizing_options_default_to_auto_and_numbers_are_kept(good: Artifacts, tmp_path: Path) -> None:
    """The manifest's sizing says which sizes the build fixed (the gateway sizes the others at start,
    gateway/sizing.py); model_onnx batches requests of any lengths, up to more texts than one client request holds."""
    from gateway.sizing import build_sizing

    result = make_image(good, tmp_path / "b", "--no-build", "--ort-threads", "3", "--batch-delay-us", "0100",
                        "--busy-ort-threads", "0")
    assert result.returncode == 0, result.stderr
    repo = tmp_path / "b" / "ensemble_model" / "context" / "model_repository"
    build = build_sizing(repo)
    assert build.explicit() == {"ort_threads": 3, "batch_delay_us": 100, "busy_ort_threads": 0}
    assert build.model_batching
    onnx = (repo / "model_onnx" / "config.pbtxt").read_text()
    assert 'string_value: "3"' in onnx and "max_queue_delay_microseconds: 100" in onnx
    assert re.search(r"max_batch_size: 64\b", onnx) and onnx.count("allow_ragged_batch: true") >= 2
    assert 'backend: "python"' in onnx and (repo / "model_onnx" / "1" / "model.py").is_file()
    assert 'key: "intra_op_allow_spinning" value: { string_value: "" }' in onnx  # model.py decides


def test_no_ort_spinning_is_rendered(good: Artifacts, tmp_path: Path) -> None:
    result = make_image(good, tmp_path / "b", "--no-build", "--no-ort-spinning")
    assert result.returncode == 0, result.stderr
    onnx = rendered(tmp_path / "b", "model_onnx")
    assert 'key: "intra_op_allow_spinning" value: { string_value: "0" }' in onnx, onnx


def test_single_label_model_keeps_todays_outputs(good: Artifacts, tmp_path: Path) -> None:
    result = make_image(good, tmp_path / "b", "--no-build")
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr
    for model in ("ensemble_model", "post_processing"):
        assert '"labels"' not in rendered(tmp_path / "b", model)
    assert 'string_value: "softmax"' in rendered(tmp_path / "b", "post_processing")
    assert "text_pair" not in rendered(tmp_path / "b", "ensemble_model")


def test_function_override_is_said_and_rendered(good: Artifacts, tmp_path: Path) -> None:
    """sigmoid over the 4 labels of a softmax model: a notice, and the multi-label output at the default 0.5."""
    result = make_image(good, tmp_path / "b", "--no-build", "--function", "sigmoid")
    assert result.returncode == 0, result.stderr
    assert "note: --function sigmoid overrides softmax" in result.stderr
    post = rendered(tmp_path / "b", "post_processing")
    assert 'string_value: "sigmoid"' in post and 'key: "label_threshold" value: { string_value: "0.5" }' in post
    assert '{ name: "labels", data_type: TYPE_STRING, dims: [ 4 ] }' in rendered(tmp_path / "b", "ensemble_model")


def test_multi_label_threshold_is_rendered(tiny_artifacts, tmp_path: Path) -> None:
    result = make_image(tiny_artifacts("multi_label"), tmp_path / "b", "--no-build", "--threshold", ".25")
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr
    assert 'key: "label_threshold" value: { string_value: ".25" }' in rendered(tmp_path / "b", "post_processing")


def test_text_pair_needs_a_passed_parity_check_on_pairs(broken: Artifacts, tmp_path: Path) -> None:
    edit_report(broken, lambda report: report.pop("pair_parity"))
    assert_refused(make_image(broken, tmp_path / "b", "--text-pair"), "--text-pair needs a parity check on text pairs",
                   "convert the model again", build_dir=tmp_path / "b")
    edit_report(broken, lambda report: report.update(pair_parity={"passed": False, "reason": "tokens differ"}))
    assert_refused(make_image(broken, tmp_path / "b", "--text-pair"), "records a failed parity check on text pairs",
                   "tokens differ", build_dir=tmp_path / "b")
    assert make_image(broken, tmp_path / "b", "--no-build").returncode == 0  # single texts are still served


def test_text_pair_renders_the_second_input(good: Artifacts, tmp_path: Path) -> None:
    result = make_image(good, tmp_path / "b", "--no-build", "--text-pair")
    assert result.returncode == 0, result.stderr
    for model in ("ensemble_model", "text_preprocessing"):
        assert '{ name: "text_pair", data_type: TYPE_STRING, dims: [ 1 ] }' in rendered(tmp_path / "b", model)
    assert 'input_map { key: "text_pair" value: "text_pair" }' in rendered(tmp_path / "b", "ensemble_model")


@pytest.mark.parametrize("name, shown", [("new\nline", r"'\n'"), ("carriage\rreturn", r"'\r'"), ("tab\there", r"'\t'"),
                                         ("nul\x00", r"'\x00'"), ("line\u2028separator", r"'\u2028'")])
def test_label_name_that_breaks_the_label_file(broken: Artifacts, tmp_path: Path, name: str, shown: str) -> None:
    labels = broken.labels()
    labels["2"] = name
    broken.id2label.write_text(json.dumps(labels))
    assert_refused(make_image(broken, tmp_path / "b"), 'id2label: the label name of key "2"', shown,
                   "Triton's label file", build_dir=tmp_path / "b")


def test_report_of_an_older_converter(broken: Artifacts, tmp_path: Path) -> None:
    """Without function_to_apply: a single-label model with several labels keeps softmax (all that was served
    before); any other model must be converted again."""
    edit_report(broken, lambda report: report.update(problem_type="single_label_classification") or
                report.pop("function_to_apply"))
    result = make_image(broken, tmp_path / "b", "--no-build")
    assert result.returncode == 0, result.stderr
    assert 'string_value: "softmax"' in rendered(tmp_path / "b", "post_processing")
    edit_report(broken, lambda report: report.update(problem_type="regression"))
    assert_refused(make_image(broken, tmp_path / "c"), "does not record function_to_apply", "convert the model again",
                   build_dir=tmp_path / "c")


# --- the manifest tritoned.json ------------------------------------------------------------------------------

def manifest(build_dir: Path, name: str = "ensemble_model") -> dict:
    return json.loads((build_dir / name / "context" / "model_repository" / "tritoned.json").read_text())


def test_the_manifest_states_the_single_label_models_facts(good: Artifacts, tmp_path: Path) -> None:
    result = make_image(good, tmp_path / "b", "--no-build", "intents", "v1", "8")
    assert result.returncode == 0, result.stderr
    repository = tmp_path / "b" / "intents" / "context" / "model_repository"
    assert manifest(tmp_path / "b", "intents") == {
        "format": 3, "ensemble": "intents", "functions": ["softmax", "sigmoid", "none"], "inputs": ["text_input"], "outputs": ["label", "score", "probabilities"],
        "string_outputs": ["label"], "max_batch_size": 8, "labels": [good.labels()[str(i)] for i in range(4)],
        "function_to_apply": "softmax", "pipeline_function": "softmax", "label_threshold": None,
        "max_sequence_length": int(re.search(r'max_sequence_length".*?string_value: "(\d+)"',
                                             (repository / "text_preprocessing" / "config.pbtxt").read_text())[1]),
        "triton_release": "26.07", "sizing": {"preprocessing_instances": "auto", "model_instances": "auto",
                                              "ort_threads": "auto", "batch_delay_us": "auto",
                                              "busy_ort_threads": "auto", "model_batching": True}}
    assert [path.name for path in repository.iterdir() if path.is_file()] == ["tritoned.json"]


def test_the_manifest_follows_function_threshold_pairs_and_the_base(good: Artifacts, tmp_path: Path) -> None:
    result = make_image(good, tmp_path / "b", "--no-build", "--function", "sigmoid", "--text-pair",
                        "--triton-release", "24.10")
    assert result.returncode == 0, result.stderr
    facts = manifest(tmp_path / "b")
    assert facts["inputs"] == ["text_input", "text_pair"]
    assert facts["outputs"] == ["label", "score", "probabilities", "labels"]
    assert facts["string_outputs"] == ["label", "labels"]
    assert (facts["function_to_apply"], facts["pipeline_function"]) == ("sigmoid", "softmax")
    assert facts["label_threshold"] == 0.5 and facts["triton_release"] == "24.10"
    for base in (["--base-image", "example.org/triton:custom"], ["--standin"]):
        assert make_image(good, tmp_path / "c", "--no-build", *base).returncode == 0
        assert manifest(tmp_path / "c")["triton_release"] is None, base


def test_the_manifest_of_a_multi_label_model(tiny_artifacts, tmp_path: Path) -> None:
    assert make_image(tiny_artifacts("multi_label"), tmp_path / "b", "--no-build", "--threshold", ".25").returncode == 0
    facts = manifest(tmp_path / "b")
    assert (facts["function_to_apply"], facts["pipeline_function"], facts["label_threshold"]) == \
        ("sigmoid", "sigmoid", 0.25)


# --- --wheelhouse: checked against the base's Python before anything is built --------------------------------

def fake_wheelhouse(directory: Path, python: str, leave_out: str = "") -> Path:
    """A wheel file name (empty file: only names are checked) for each pinned requirement, built for `python`."""
    directory.mkdir()
    tag = "cp" + python.replace(".", "")
    for line in (ROOT / "requirements-serving.txt").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)(\[.*\])?==(\S+)", line)
        if match and match[1] != leave_out:
            name = match[1].replace("-", "_")
            (directory / f"{name}-{match[3]}-{tag}-{tag}-manylinux_2_17_x86_64.manylinux2014_x86_64.whl").touch()
    return directory


@pytest.mark.parametrize("base, wheels_for, needed", [
    (["--standin"], "3.10", "3.11"),              # the README's old command: the stand-in runs 3.11
    ([], "3.10", "3.12"),                         # the default NGC release
    (["--triton-release", "24.10"], "3.12", "3.10"),
])
def test_a_wheelhouse_for_another_python_stops_before_the_build(good: Artifacts, tmp_path: Path, base: list[str],
                                                                wheels_for: str, needed: str) -> None:
    wheels = fake_wheelhouse(tmp_path / "wheels", wheels_for)
    result = make_image(good, tmp_path / "b", "--wheelhouse", str(wheels), *base, env=NO_DOCKER)
    assert_refused(result, f"whose Python is {needed}", "aiohttp-3.14.5-cp", f"Fill it for Python {needed}",
                   f"pip download -r {ROOT / 'requirements-serving.txt'} -d {wheels} --only-binary=:all: "
                   f"--python-version {needed} --platform manylinux_2_", build_dir=tmp_path / "b")


@pytest.mark.parametrize("base, wheels_for", [(["--standin"], "3.11"), ([], "3.12"),
                                              (["--triton-release", "24.10"], "3.10")])
def test_a_wheelhouse_for_the_bases_python_passes(good: Artifacts, tmp_path: Path, base: list[str],
                                                  wheels_for: str) -> None:
    result = make_image(good, tmp_path / "b", "--no-build", "--wheelhouse",
                        str(fake_wheelhouse(tmp_path / "wheels", wheels_for)), *base)
    assert result.returncode == 0, result.stderr
    assert "not checked" not in result.stderr


def test_a_wheelhouse_without_a_pinned_requirement_or_with_junk(good: Artifacts, tmp_path: Path) -> None:
    wheels = fake_wheelhouse(tmp_path / "wheels", "3.11", leave_out="aiohttp")
    (wheels / "junk.whl").touch()
    assert_refused(make_image(good, tmp_path / "b", "--standin", "--wheelhouse", str(wheels)),
                   "no wheel there fits aiohttp==3.14.5", "junk.whl (not a wheel's file name)",
                   "--python-version 3.11", build_dir=tmp_path / "b")


def test_the_wheels_of_an_unknown_base_are_not_checked(good: Artifacts, tmp_path: Path) -> None:
    result = make_image(good, tmp_path / "b", "--no-build", "--base-image", "example.org/triton:custom",
                        "--wheelhouse", str(fake_wheelhouse(tmp_path / "wheels", "3.9")))
    assert result.returncode == 0, result.stderr
    assert "the Python of example.org/triton:custom is unknown to this script" in result.stderr
