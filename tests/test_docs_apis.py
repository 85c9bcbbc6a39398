"""docs/apis.md's commands as written (taken from the file, never copied here), against a tiny single-text
classifier served as ./quickstart.sh serves its demo (ensemble_model, localhost:8000 replaced by the test
server's address): every curl answers as transformers' pipeline does (the /rerank one with TEI's 424, as the
page says for a model that is not a cross-encoder), and the InferenceClient snippet prints the pipeline's labels."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from test_readme import code_blocks, commands

DOC = ROOT / "docs" / "apis.md"
MODEL = "ensemble_model"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def served(default_bert):
    from transformers import pipeline

    from bench.local_server import max_sequence_length

    server, artifacts, repository = default_bert.server, default_bert.artifacts, default_bert.repository
    pipe = pipeline("text-classification", model=str(artifacts.hf_dir), tokenizer=str(artifacts.hf_dir), device="cpu")
    length = max_sequence_length(repository)
    return server, lambda item, **kwargs: pipe(item, truncation=True, max_length=length, **kwargs)


def same(answer: list[dict], want: list[dict]) -> None:
    assert [entry["label"] for entry in answer] == [entry["label"] for entry in want], (answer, want)
    assert all(abs(a["score"] - b["score"]) <= TOLERANCE for a, b in zip(answer, want)), (answer, want)


def curls() -> list[list[str]]:
    found = [command for block in code_blocks("bash", DOC) for command in commands(block)]
    assert found and all(command[0] == "curl" for command in found), found
    return found


def run_curl(command: list[str], address: str) -> tuple[int, object]:
    words = [word.replace("localhost:8000", address) for word in command]
    result = subprocess.run([*words, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=120)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_the_page_has_a_curl_per_api() -> None:
    paths = {re.sub(r"^https?://localhost:8000", "", word) for command in curls() for word in command
             if word.startswith("http://localhost:8000")}
    assert paths == {"/", "/predict", "/info", "/rerank", f"/v2/models/{MODEL}/infer"}, paths


def test_every_curl_answers_as_the_pipeline(served) -> None:
    server, pipeline = served
    for command in curls():
        status, answer = run_curl(command, server.http_url)
        url = next(word for word in command if word.startswith("http://"))
        body = json.loads(command[command.index("-d") + 1]) if "-d" in command else None
        path = url.replace("http://localhost:8000", "")
        if path == "/rerank":
            assert status == 424 and answer["error_type"] == "Backend", answer  # not a cross-encoder, as written
            continue
        assert status == 200, (command, answer)
        if path == "/":
            same(answer[0], pipeline(body["inputs"], **body.get("parameters", {})))
        elif path == "/predict":
            for entry, (text,) in zip(answer, body["inputs"]):
                same(sorted(entry, key=lambda e: -e["score"]), pipeline(text, top_k=None))
        elif path == "/info":
            assert answer["model_id"] == MODEL and "classifier" in answer["model_type"], answer
        else:
            outputs = {output["name"]: output["data"] for output in answer["outputs"]}
            assert outputs["label"] == [pipeline(body["inputs"][0]["data"][0])[0]["label"]], answer


def test_the_inference_client_snippet_prints_the_pipelines_labels(served) -> None:
    server, pipeline = served
    blocks = code_blocks("python", DOC)
    assert len(blocks) == 1, blocks
    script = blocks[0].replace("localhost:8000", server.http_url)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(ROOT))
    assert result.returncode == 0, result.stderr
    text = re.search(r'text_classification\("([^"]+)"', script).group(1)
    printed = [[{"label": label, "score": float(score)}
                for label, score in re.findall(r"label='([^']*)', score=([-0-9.e]+)", line)]
               for line in result.stdout.strip().splitlines()]
    assert len(printed) == 2, result.stdout
    same(printed[0], pipeline(text))
    same(printed[1], pipeline(text, top_k=2))
