"""--model-storage clearml / --tokenizer-storage clearml through the real clearml SDK.

The open-source ClearML server cannot run here, so tests/servers/clearml_api.py stands in for it on 127.0.0.1
(API and files server in one). What is tested this way, exactly: the SDK logs in with the access/secret key
from CLEARML_API_ACCESS_KEY / CLEARML_API_SECRET_KEY (auth.login), looks a model up by id
(models.get_by_id) or a task by id (tasks.get_by_id, for TASK_ID:ARTIFACT_NAME), and downloads the zipped
save_pretrained directory from the files server (CLEARML_FILES_HOST), which the converter then converts.
Not tested: clearml.conf files, S3/GS/Azure-hosted model files, and the real server's other endpoints.
The CLI runs in a subprocess with HOME in a temporary directory (ClearML's cache, no clearml.conf).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import ROOT, build_serve_and_ask
from servers.clearml_api import ClearMLModel, ClearMLState, ClearMLTask, FakeClearML
from test_convert_to_onnx import served_probabilities
from tiny_models import build_tiny_bert

MODEL_ID = "5c9a1b7e2f3d4a6b8c0d1e2f3a4b5c6d"
TASK_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
ACCESS_KEY, SECRET_KEY = "TESTACCESSKEY", "test-secret-key"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def zipped(directory: Path, names: list[str], prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.write(directory / name, prefix + name)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clearml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeClearML]:
    """A model registered as a package (zip of the model files) and a task whose artifact 'tokenizer' is a zip of
    a tokenizer/ folder."""
    hf_dir = build_tiny_bert(tmp_path_factory.mktemp("clearml-src") / "bert")
    model_files = sorted(p.name for p in hf_dir.iterdir() if p.name not in TOKENIZER_FILES)
    state = ClearMLState(
        access_key=ACCESS_KEY, secret_key=SECRET_KEY,
        files={"acme/model.zip": zipped(hf_dir, model_files),
               "acme/tokenizer.zip": zipped(hf_dir, list(TOKENIZER_FILES), prefix="tokenizer/")},
        models={MODEL_ID: ClearMLModel(file="acme/model.zip")},
        tasks={TASK_ID: ClearMLTask(artifacts={"tokenizer": "acme/tokenizer.zip"})},
    )
    with FakeClearML(state) as server:
        yield server


def convert_cli(*args: str, env: dict[str, str], home: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "utils/convert_to_onnx.py", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**clean, "HOME": str(home), "CLEARML_CONFIG_FILE": str(home / "none.conf"),
                                          **env}, timeout=300)


def credentials(server: FakeClearML, secret: str = SECRET_KEY) -> dict[str, str]:
    return {"CLEARML_API_HOST": server.url, "CLEARML_FILES_HOST": server.url,
            "CLEARML_API_ACCESS_KEY": ACCESS_KEY, "CLEARML_API_SECRET_KEY": secret}


def the_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def assert_nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists()
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]


def test_model_id_and_task_artifact_convert(clearml: FakeClearML, tmp_path: Path, serve) -> None:
    before = len(clearml.requests)
    out = tmp_path / "out"
    result = convert_cli("--model", MODEL_ID, "--model-storage", "clearml",
                         "--tokenizer", f"{TASK_ID}:tokenizer", "--tokenizer-storage", "clearml",
                         "--output-dir", str(out), env=credentials(clearml), home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "parity:" in result.stdout and "from ClearML" in result.stderr

    actions = clearml.actions()[before:]
    assert "auth.login" in actions and "models.get_by_id" in actions and "tasks.get_by_id" in actions
    assert "/files/acme/model.zip" in actions and "/files/acme/tokenizer.zip" in actions
    assert all(a.startswith("/files/") or a in {"auth.login", "models.get_by_id", "tasks.get_by_id"} for a in actions)

    report = json.loads((out / "conversion_report.json").read_text())
    assert report["source"]["model"]["resolved"] == f"clearml:{MODEL_ID}"
    assert report["source"]["tokenizer"]["resolved"] == f"clearml:{TASK_ID}:tokenizer"
    assert report["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and report["parity"]["passed"]
    assert len(json.loads((out / "id2label.json").read_text())) == report["num_labels"]

    texts = ["помогите мне", "where is my order", "спасибо 🙂"]
    labels, probabilities = build_serve_and_ask(out, serve, tmp_path / "build", texts)
    np.testing.assert_allclose(probabilities, served_probabilities(out, texts, report["inputs"]), atol=1e-5)
    names = json.loads((out / "id2label.json").read_text())
    assert labels == [names[str(i)] for i in probabilities.argmax(axis=1)]


def test_missing_credentials(clearml: FakeClearML, tmp_path: Path) -> None:
    before = len(clearml.requests)
    out = tmp_path / "out"
    result = convert_cli("--model", MODEL_ID, "--model-storage", "clearml", "--output-dir", str(out),
                         env={"CLEARML_API_HOST": clearml.url}, home=tmp_path / "home")
    assert result.returncode != 0
    message = the_error(result.stderr)
    assert "credentials are missing" in message and "CLEARML_API_ACCESS_KEY" in message
    assert "CLEARML_API_SECRET_KEY" in message and "clearml-init" in message
    assert len(clearml.requests) == before  # refused before contacting the server
    assert_nothing_written(out)


@pytest.mark.parametrize("source, secret, phrase", [
    (MODEL_ID, "wrong-secret", "rejected the credentials"),
    ("0" * 32, SECRET_KEY, f"no ClearML model with id '{'0' * 32}'"),
    ("f" * 32 + ":tokenizer", SECRET_KEY, f"no ClearML task with id '{'f' * 32}'"),
    (f"{TASK_ID}:weights", SECRET_KEY, "has no artifact 'weights' (it has ['tokenizer'])"),
])
def test_clearml_errors(clearml: FakeClearML, tmp_path: Path, source: str, secret: str, phrase: str) -> None:
    out = tmp_path / "out"
    result = convert_cli("--model", source, "--model-storage", "clearml", "--output-dir", str(out),
                         env=credentials(clearml, secret), home=tmp_path / "home")
    assert result.returncode != 0
    assert phrase in the_error(result.stderr)
    assert_nothing_written(out)
