"""gateway/manifest.py reads what utils/write_manifest.py writes (every kind: single texts, pairs, multi-label),
refuses a missing or malformed manifest with a message naming the file and the fix, and finds the repository in
tritonserver's arguments. No server: the reader is plain file parsing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from gateway import manifest

sys.path.insert(0, str(ROOT / "utils"))
from write_manifest import manifest as written  # noqa: E402

KINDS = {
    "single": dict(labels=["a", "b"], function="softmax", pipeline_function="softmax"),
    "pair_reranker": dict(labels=["LABEL_0"], function="sigmoid", pipeline_function="sigmoid", text_pair=True),
    "multi_label": dict(labels=["x", "y", "z"], function="sigmoid", pipeline_function="sigmoid",
                        label_threshold=0.45, triton_release="26.07"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_reads_what_make_triton_image_writes(kind: str, tmp_path: Path) -> None:
    data = written("ensemble_model", max_batch_size=4, max_sequence_length=128, **KINDS[kind])
    (tmp_path / manifest.FILE_NAME).write_text(json.dumps(data), encoding="utf-8")
    facts = manifest.load(tmp_path)
    assert facts.labels == tuple(data["labels"]) and facts.max_batch_size == 4 and facts.max_sequence_length == 128
    assert facts.takes_pairs == (kind == "pair_reranker") and facts.is_reranker == (kind == "pair_reranker")
    assert facts.label_threshold == data["label_threshold"] and facts.string_outputs == tuple(data["string_outputs"])
    assert facts.sizing == manifest.BuildSizing()  # all auto, batched


def test_reads_the_sizes_the_build_fixed(tmp_path: Path) -> None:
    data = written("ensemble_model", max_batch_size=4, max_sequence_length=128, sizes={"ort_threads": 3,
                   "batch_delay_us": 0}, model_batching=False, **KINDS["single"])
    (tmp_path / manifest.FILE_NAME).write_text(json.dumps(data), encoding="utf-8")
    facts = manifest.load(tmp_path).sizing
    assert facts.explicit() == {"ort_threads": 3, "batch_delay_us": 0} and not facts.model_batching


BROKEN = {
    "not_json": ("{", "is not valid JSON"),
    "a_list": ("[]", "not a JSON object"),
    "old_format": (json.dumps({"format": 1}), f"format 1 is not {manifest.FORMAT}"),
    "bad_function": (None, "'function_to_apply' is 'tanh'"),
    "labels_not_strings": (None, "'labels' must be a list of strings"),
    "batch_a_string": (None, "'max_batch_size' has the wrong type"),
    "missing_member": (None, "member 'ensemble' is missing"),
    "sizing_missing": (None, "member 'sizing' is missing"),
    "sizing_not_an_object": (None, "member 'sizing' has the wrong type (list)"),
    "sizing_zero_instances": (None, "sizing.model_instances must be \"auto\" or an integer >= 1, got 0"),
    "sizing_batching_a_string": (None, "sizing.model_batching must be true or false, got 'no'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_malformed_manifest_names_the_file_and_the_fix(case: str, tmp_path: Path) -> None:
    text, expected = BROKEN[case]
    if text is None:
        data = written("ensemble_model", labels=["a", "b"], max_batch_size=4, function="softmax",
                       pipeline_function="softmax", max_sequence_length=64)
        if case == "bad_function":
            data["function_to_apply"] = "tanh"
        elif case == "labels_not_strings":
            data["labels"] = [0, 1]
        elif case == "batch_a_string":
            data["max_batch_size"] = "4"
        elif case == "sizing_missing":
            del data["sizing"]
        elif case == "sizing_not_an_object":
            data["sizing"] = ["auto"]
        elif case == "sizing_zero_instances":
            data["sizing"]["model_instances"] = 0
        elif case == "sizing_batching_a_string":
            data["sizing"]["model_batching"] = "no"
        else:
            del data["ensemble"]
        text = json.dumps(data)
    (tmp_path / manifest.FILE_NAME).write_text(text, encoding="utf-8")
    with pytest.raises(manifest.ManifestError) as raised:
        manifest.load(tmp_path)
    assert expected in str(raised.value) and str(tmp_path / manifest.FILE_NAME) in str(raised.value)
    assert "make_triton_image.sh" in str(raised.value)


def test_a_missing_manifest_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(manifest.ManifestError, match="does not exist.*make_triton_image.sh"):
        manifest.load(tmp_path)


@pytest.mark.parametrize("command, expected", [
    (["tritonserver", "--model-repository=/models"], Path("/models")),
    (["tritonserver", "--log-verbose=1", "--model-repository", "/m"], Path("/m")),
    (["tritonserver", "--model-store=/old"], Path("/old")),
    (["tritonserver"], None),
    (["tritonserver", "--model-repository=/a", "--model-repository=/b"], None),  # two: no single manifest
])
def test_the_repository_is_found_in_tritonservers_arguments(command: list[str], expected: Path | None) -> None:
    assert manifest.repository_of(command) == expected


def gateway_settings(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m gateway`'s settings as parsed (the tritonserver command), nothing started."""
    probe = ("import json, sys; from gateway import settings; "
             "print(json.dumps(settings.parse(sys.argv[1:]).tritonserver))")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TRITONED_")}
    return subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**environment, **env})


def test_the_gateway_passes_its_repository_to_tritonserver() -> None:
    """--repository DIR (or TRITONED_REPOSITORY, which the image's Dockerfile sets) becomes tritonserver's repository
    argument, which then is the one manifest.repository_of finds; tritonserver's own argument still works alone."""
    for args, env in ((["--repository", "/r d"], {}), ([], {"TRITONED_REPOSITORY": "/r d"})):
        result = gateway_settings(*args, "--", "tritonserver", "--log-verbose=1", **env)
        assert result.returncode == 0, result.stderr
        command = json.loads(result.stdout)
        assert command[0] == "tritonserver" and "--log-verbose=1" in command, command
        assert manifest.repository_of(command) == Path("/r d")
    result = gateway_settings("--", "tritonserver", "--model-repository", "/own")
    assert result.returncode == 0 and manifest.repository_of(json.loads(result.stdout)) == Path("/own")


@pytest.mark.parametrize("given", [["--model-repository=/b"], ["--model-store", "/b"]])
def test_a_repository_given_twice_is_refused(given: list[str]) -> None:
    """docker run IMAGE --model-repository=/b (the image names its repository): refused with the fix, nothing run."""
    result = gateway_settings("--", "tritonserver", *given, TRITONED_REPOSITORY="/models")
    assert result.returncode == 2, result
    assert "given twice" in result.stderr and "TRITONED_REPOSITORY" in result.stderr and "once" in result.stderr


def test_the_healthcheck_without_a_repository_says_what_to_give() -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TRITONED_")}
    result = subprocess.run([sys.executable, "-m", "gateway.healthcheck", "--url", "127.0.0.1:1"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT, env=environment)
    assert result.returncode == 2 and "--repository" in result.stderr and "TRITONED_REPOSITORY" in result.stderr, \
        result.stderr


def write_manifest(repository: Path, *options: str) -> subprocess.CompletedProcess:
    (repository / "id2label.json").write_text('{"0": "a", "1": "b"}', encoding="utf-8")
    return subprocess.run([sys.executable, str(ROOT / "utils" / "write_manifest.py"), str(repository), "--ensemble",
                           "m", "--id2label", str(repository / "id2label.json"), "--max-batch-size", "4", "--function",
                           "softmax", "--pipeline-function", "softmax", "--max-sequence-length", "64", *options],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("option, value, expected", [
    ("--model-instances", "0", 'must be "auto" or an integer >= 1, got 0'),
    ("--ort-threads", "many", 'must be "auto" or an integer >= 0, got many'),
    ("--batch-delay-us", "-5", 'must be "auto" or an integer >= 0, got -5'),
    ("--busy-ort-threads", "-1", 'must be "auto" or an integer >= 0, got -1'),
])
def test_the_writer_refuses_a_bad_size(option: str, value: str, expected: str, tmp_path: Path) -> None:
    """utils/write_manifest.py (make_triton_image.sh checks its options first) writes nothing for a bad size."""
    result = write_manifest(tmp_path, f"{option}={value}")
    assert result.returncode == 2 and expected in result.stderr and option in result.stderr, result.stderr
    assert not (tmp_path / manifest.FILE_NAME).exists()
    result = write_manifest(tmp_path, f"{option}=007", "--no-model-batching")
    assert result.returncode == 0, result.stderr
    sizing = manifest.load(tmp_path).sizing
    assert sizing.explicit() == {option[2:].replace("-", "_"): 7} and not sizing.model_batching
