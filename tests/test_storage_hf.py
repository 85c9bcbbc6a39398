"""--model-storage hf / --tokenizer-storage hf through the real huggingface_hub, offline.

The Hub is tests/servers/hf_hub.py on 127.0.0.1, reached through HF_ENDPOINT; the Hub cache (HF_HOME) is a
temporary directory the real client populates, and a second conversion reads it with HF_HUB_OFFLINE=1.
The converter runs as the CLI in a subprocess, so huggingface_hub reads the environment as a user's would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import ROOT, build_serve_and_ask
from servers.base import Recorded
from servers.hf_hub import FakeHub, HubRepo, repo_from_directory, resolved_path
from test_convert_to_onnx import served_probabilities
from tiny_models import build_tiny_roberta

MODEL_REPO = "acme/tiny-roberta"
TOKENIZER_REPO = "acme/tiny-roberta-tokenizer"  # private: needs HF_TOKEN
TOKEN = "hf_test_token"
V1_LABELS = {"0": "help-v1", "1": "order-v1", "2": "refund-v1", "3": "thanks-v1"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
DECOYS = {"tf_model.h5": b"\0" * 64, "onnx/model.onnx": b"\0" * 64, "flax_model.msgpack": b"\0" * 64}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """A model repo (main, and tag v1 whose config renames the labels) without tokenizer files, plus a private
    tokenizer repo; the model repo also holds TF/Flax/ONNX files a conversion must not download."""
    hf_dir = build_tiny_roberta(tmp_path_factory.mktemp("hub-src") / "roberta")
    files = repo_from_directory(hf_dir, DECOYS)
    model_files = {name: data for name, data in files.items() if name not in TOKENIZER_FILES}
    v1_config = json.loads(model_files["config.json"])
    v1_config["id2label"] = V1_LABELS
    v1_config["label2id"] = {name: int(key) for key, name in V1_LABELS.items()}
    v1_files = {**model_files, "config.json": json.dumps(v1_config).encode()}
    repos = {
        MODEL_REPO: HubRepo({"main": model_files, "v1": v1_files}),
        TOKENIZER_REPO: HubRepo({"main": {name: files[name] for name in TOKENIZER_FILES}}, token=TOKEN),
    }
    with FakeHub(repos) as server:
        yield server


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-home")


def convert_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "utils/convert_to_onnx.py", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**clean, "HF_HUB_DISABLE_TELEMETRY": "1", **env}, timeout=300)


def the_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def assert_nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists()
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]


@dataclass(frozen=True)
class Online:
    result: subprocess.CompletedProcess
    out: Path
    new_requests: list[Recorded]


@pytest.fixture(scope="module")
def online(hub: FakeHub, hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Online:
    """One conversion with the Hub reachable: the model at tag v1 and the tokenizer from the private repo."""
    out = tmp_path_factory.mktemp("online") / "out"
    before = len(hub.requests)
    result = convert_cli("--model", MODEL_REPO, "--model-storage", "hf", "--model-revision", "v1",
                         "--tokenizer", TOKENIZER_REPO, "--tokenizer-storage", "hf", "--output-dir", str(out),
                         env={"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "HF_TOKEN": TOKEN})
    return Online(result, out, hub.requests[before:])


def test_model_at_a_tag_and_a_private_tokenizer_repo_download_and_convert(online: Online, hub: FakeHub,
                                                                          hf_home: Path, serve, tmp_path: Path
                                                                          ) -> None:
    assert online.result.returncode == 0, online.result.stderr
    assert "parity:" in online.result.stdout
    assert "from the Hugging Face Hub" in online.result.stderr  # progress while fetching

    out = online.out
    assert json.loads((out / "id2label.json").read_text()) == V1_LABELS  # the tag's config, not main's
    report = json.loads((out / "conversion_report.json").read_text())
    v1_commit = hub.repos[MODEL_REPO].commit_of("v1")
    assert report["source"]["model"] == {"storage": "hf", "location": MODEL_REPO, "revision": "v1",
                                         "resolved": f"{MODEL_REPO}@{v1_commit}"}
    assert report["source"]["tokenizer"]["resolved"].startswith(f"{TOKENIZER_REPO}@")
    assert report["inputs"] == ["input_ids", "attention_mask"] and report["parity"]["passed"]

    downloaded = {path for request in online.new_requests if request.method == "GET"
                  for path in [resolved_path(request)] if path}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= downloaded
    assert not downloaded & set(DECOYS), "TF/Flax/ONNX copies must not be downloaded"
    cache = hf_home / "hub" / "models--acme--tiny-roberta"
    assert (cache / "snapshots" / v1_commit / "model.safetensors").is_file()  # the real Hub cache layout
    assert (cache / "refs" / "v1").read_text() == v1_commit

    texts = ["помогите мне", "where is my order", "спасибо 🙂"]
    labels, probabilities = build_serve_and_ask(out, serve, tmp_path / "build", texts)
    np.testing.assert_allclose(probabilities, served_probabilities(out, texts, report["inputs"]), atol=1e-5)
    names = json.loads((out / "id2label.json").read_text())
    assert labels == [names[str(i)] for i in probabilities.argmax(axis=1)]


def test_offline_conversion_reads_the_hub_cache_only(online: Online, hub: FakeHub, hf_home: Path,
                                                     tmp_path: Path) -> None:
    """After the online conversion filled the cache, HF_HUB_OFFLINE=1 converts without reaching the Hub."""
    assert online.result.returncode == 0, online.result.stderr
    before = len(hub.requests)
    out = tmp_path / "out"
    result = convert_cli("--model", MODEL_REPO, "--model-storage", "hf", "--model-revision", "v1",
                         "--tokenizer", TOKENIZER_REPO, "--tokenizer-storage", "hf", "--output-dir", str(out),
                         env={"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert len(hub.requests) == before
    assert json.loads((out / "id2label.json").read_text()) == V1_LABELS


@pytest.mark.parametrize("args, phrases", [
    (["--model", "acme/does-not-exist"], ["'acme/does-not-exist' was not found", "HF_TOKEN"]),
    (["--model", MODEL_REPO, "--model-revision", "v9"], ["revision 'v9' was not found", "--model-revision"]),
    (["--model", "not a/valid//id"], ["is not a Hugging Face Hub repo id", "user/model_name"]),
    (["--model", MODEL_REPO, "--tokenizer", TOKENIZER_REPO], [f"'{TOKENIZER_REPO}' was not found", "HF_TOKEN"]),
])
def test_hub_errors(hub: FakeHub, tmp_path: Path, args: list[str], phrases: list[str]) -> None:
    out = tmp_path / "out"
    result = convert_cli(*args, "--model-storage", "hf", "--output-dir", str(out),
                         env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")})
    assert result.returncode != 0
    message = the_error(result.stderr)
    for phrase in phrases:
        assert phrase in message
    assert_nothing_written(out)


def test_offline_without_a_cached_copy(hub: FakeHub, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = convert_cli("--model", MODEL_REPO, "--model-storage", "hf", "--output-dir", str(out),
                         env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "empty-home"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    message = the_error(result.stderr)
    assert "not complete in the Hub cache" in message and "HF_HUB_OFFLINE" in message
    assert_nothing_written(out)
