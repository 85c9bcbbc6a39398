"""The README's own commands and snippets, taken from README.md as they are written (never copied here): the
English quick start's steps run in a fresh clone and end with a clean `git status` after ./cleanup.sh; every
directory the examples write to lies in build/ and cannot be taken by a model's name; the Python snippets (HTTP
and gRPC) answer against the real local Triton with decoded labels, as PyTorch does; each kind of model in
"Виды моделей" converts, builds and serves by its commands, and its curl answers as the HF pipeline does."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, Artifacts, make_image
from local_triton import LocalTriton
from reference import expected_outputs, labels_of, pipeline_answers, pytorch_probabilities
from tiny_models import BUILDERS

README = ROOT / "README.md"
NO_DOCKER_ENGINE = "unix:///nonexistent/docker.sock"  # `docker info` fails: make_triton_image.sh builds no image


def code_blocks(language: str, readme: Path = README) -> list[str]:
    """The README's fenced code blocks in `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", readme.read_text(encoding="utf-8"), re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block: continuations joined, comments dropped, `a && b` split in two."""
    found: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            head, tokens = (tokens[:tokens.index("&&")], tokens[tokens.index("&&") + 1:]) if "&&" in tokens \
                else (tokens, [])
            found.append(head)
    return found


def own_model_steps(readme: Path) -> list[list[str]]:
    """The English quick start's "your own model" block: checkpoint -> conversion -> image -> serving -> cleanup."""
    blocks = [block for block in code_blocks("bash", readme) if "path/to/checkpoint" in block and "./cleanup.sh" in block]
    assert len(blocks) == 1, f"expected one README block with the whole flow, found {len(blocks)}"
    return commands(blocks[0])


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


# ------------------------------------------------------------------------------------------ the flow, fresh clone

@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """`git clone` of this checkout's HEAD (commit first to test a change), with .venv linked to this one's."""
    if not (ROOT / ".git").exists() or not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("needs a git checkout with .venv (./setup_venv.sh)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True)
    (clone / ".venv").symlink_to((ROOT / ".venv").resolve())
    assert git(clone, "status", "--porcelain") == "", "a fresh clone with .venv linked is not clean"
    return clone


def test_the_readme_flow_in_a_fresh_clone_ends_with_a_clean_git_status(fresh_clone: Path, tmp_path: Path) -> None:
    checkpoint = BUILDERS["bert"](tmp_path / "checkpoint")
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRITONED_")}
    env["DOCKER_HOST"] = NO_DOCKER_ENGINE
    ran: list[str] = []
    for command in own_model_steps(fresh_clone / "README.md"):
        command = [str(checkpoint) if word == "path/to/checkpoint" else word for word in command]
        script = command[1] if command[0].endswith("python") else command[0]
        if script == "docker":
            continue  # runs the image the step before would build; Docker builds are tested in test_container.py
        if script == "./serve_local.sh":
            (target,) = command[1:]
            server = LocalTriton(repository=target, log=tmp_path / "serve.log", checkout=fresh_clone,
                                 build_dir=fresh_clone / "build", python=str(fresh_clone / ".venv" / "bin" / "python"))
            server.start()
            assert server.interrupt() == 0, server.log_text()
        else:
            if script == "./cleanup.sh":
                assert "build" in git(fresh_clone, "status", "--porcelain", "--ignored"), "the steps wrote nothing"
                assert git(fresh_clone, "status", "--porcelain") == "", "a step wrote outside the ignored build/"
            result = subprocess.run(command, cwd=fresh_clone, env=env, capture_output=True, text=True, timeout=600)
            # With no Docker engine reachable, make_triton_image.sh assembles the repository and exits 3.
            expected = 3 if script == "./make_triton_image.sh" and "--no-build" not in command else 0
            assert result.returncode == expected, (command, result.returncode, result.stderr[-3000:])
        ran.append(script)
    assert ran == ["utils/convert_to_onnx.py", "./make_triton_image.sh", "./make_triton_image.sh",
                   "./serve_local.sh", "./cleanup.sh"], ran
    assert git(fresh_clone, "status", "--porcelain") == ""
    assert git(fresh_clone, "status", "--porcelain", "--ignored") == "!! .venv\n", "cleanup.sh left files behind"


def test_every_example_writes_under_build_where_no_model_name_can_land() -> None:
    """The directories the README's commands write (--output-dir, pip download -d, the converter output that
    make_triton_image.sh reads) lie in build/, which cleanup.sh removes; and make_triton_image.sh refuses a
    MODEL_NAME equal to one of them, whose build/MODEL_NAME/ would replace it."""
    written = set()
    for block in code_blocks("bash"):
        for command in commands(block):
            pip_download = command[0].endswith("pip") and command[1] == "download"
            for option in ("--output-dir", "--wheelhouse") + (("-d",) if pip_download else ()):
                if option in command:
                    written.add(command[command.index(option) + 1])
            if command[0] == "./make_triton_image.sh":
                written.update(word for word in command if word.endswith(("model.onnx", "id2label.json")))
    assert written and all(path.startswith("build/") for path in written), sorted(written)
    for name in {path.split("/")[1] for path in written}:
        result = subprocess.run([str(ROOT / "make_triton_image.sh"), "m.onnx", "tok", "id2label.json", name],
                                capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 2 and f"MODEL_NAME '{name}' is reserved" in result.stderr, (name, result.stderr)


# ------------------------------------------------------------------------------------------ the kinds of models

# Each block of "Виды моделей" names its artifacts build/artifacts/<kind>; the tiny model that stands in for the
# user's checkpoint. The intents block converts the demo model (build/demo/hf): a tiny single-label one here.
KIND_MODELS = {"intents": "bert", "toxicity": "multi_label", "nli": "nli_bert", "reranker": "reranker"}


def kind_blocks(readme: Path = README) -> dict[str, list[list[str]]]:
    """The commands of each bash block in the README's section on kinds of models, by kind."""
    text = readme.read_text(encoding="utf-8")
    section = text[text.index("\n## Виды моделей"):]
    section = section[:section.index("\n## ", 1)]
    blocks = {}
    for block in re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M):
        steps = commands(block)
        blocks[re.search(r"build/artifacts/(\w+)", " ".join(steps[0])).group(1)] = steps
    return blocks


def test_the_kinds_section_has_a_block_per_kind_of_model() -> None:
    assert sorted(kind_blocks()) == sorted(KIND_MODELS)


def answer_rows(body: dict, outputs: dict[str, dict]) -> list[dict[str, object]]:
    """A curl's JSON answer, per text: each output's row."""
    rows = []
    count = body["inputs"][0]["shape"][0]
    for index in range(count):
        row = {}
        for name, output in outputs.items():
            width = len(output["data"]) // count
            row[name] = output["data"][index * width:(index + 1) * width]
        rows.append(row)
    return rows


@pytest.mark.parametrize("kind", sorted(KIND_MODELS))
def test_each_kind_is_converted_built_served_and_answers_like_the_pipeline(fresh_clone: Path, tmp_path: Path,
                                                                           kind: str) -> None:
    """The section's commands as written (the checkpoint path swapped for a tiny model of the kind, the port for
    the test server's): convert, build with --no-build, serve, and each curl answers as
    transformers.pipeline("text-classification", top_k=None): label, score, probabilities and multi-label labels
    within 1e-4, top-k strings of the classification extension in the pipeline's order."""
    checkpoint = BUILDERS[KIND_MODELS[kind]](tmp_path / kind)
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRITONED_")}
    steps = kind_blocks(fresh_clone / "README.md")[kind]
    convert, build, serve, *curls = steps
    assert curls and [step[0] for step in curls] == ["curl"] * len(curls), steps
    for command in (convert, build):
        command = [str(checkpoint) if word in (f"path/to/{kind}", "build/demo/hf") else word for word in command]
        result = subprocess.run(command, cwd=fresh_clone, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (command, result.stderr[-3000:])
    assert serve[0] == "./serve_local.sh"
    server = LocalTriton(repository=serve[1], log=tmp_path / "serve.log", checkout=fresh_clone,
                         build_dir=fresh_clone / "build", python=str(fresh_clone / ".venv" / "bin" / "python"))
    server.start()
    try:
        artifacts = fresh_clone / "build" / "artifacts" / kind
        id2label = json.loads((artifacts / "id2label.json").read_text())
        max_length = json.loads((artifacts / "conversion_report.json").read_text())["max_sequence_length"]
        for curl in curls:
            result = subprocess.run([word.replace("localhost:8000", server.http_url) for word in curl],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            body = json.loads(curl[curl.index("-d") + 1])
            inputs = {item["name"]: item["data"] for item in body["inputs"]}
            items = list(zip(inputs["text_input"], inputs["text_pair"])) if "text_pair" in inputs \
                else inputs["text_input"]
            want = [expected_outputs(answer, id2label) for answer in pipeline_answers(checkpoint, items, max_length)]
            outputs = {output["name"]: output for output in json.loads(result.stdout)["outputs"]}
            asked = [output["name"] for output in body.get("outputs", [])] or \
                ["label", "score", "probabilities"] + (["labels"] if kind == "toxicity" else [])
            assert sorted(outputs) == sorted(asked), result.stdout
            for row, expected in zip(answer_rows(body, outputs), want, strict=True):
                if "label" in row:
                    assert row["label"] == [expected.label]
                if "score" in row:
                    assert abs(row["score"][0] - expected.score) <= 1e-4, (row, expected)
                if "labels" in row:
                    assert row["labels"] == expected.applicable + [""] * (len(id2label) - len(expected.applicable))
                if "probabilities" in row and outputs["probabilities"]["datatype"] == "FP32":
                    np.testing.assert_allclose(row["probabilities"], expected.values, atol=1e-4, rtol=0)
                elif "probabilities" in row:  # "value:index:label", highest first
                    top = [entry.split(":", 2) for entry in row["probabilities"]]
                    order = np.argsort(-expected.values, kind="stable")[:len(top)]
                    assert [(int(index), name) for _, index, name in top] == \
                        [(int(i), id2label[str(i)]) for i in order], (top, expected)
                    np.testing.assert_allclose([float(value) for value, _, _ in top], expected.values[order],
                                               atol=1e-4, rtol=0)
    finally:
        assert server.interrupt() == 0, server.log_text()


# ------------------------------------------------------------------------------------------ the Python snippets

@pytest.fixture(scope="module")
def served(tiny_artifacts, serve, tmp_path_factory) -> tuple[Artifacts, LocalTriton]:
    artifacts = tiny_artifacts("bert")
    build_dir = tmp_path_factory.mktemp("build-readme")
    result = make_image(artifacts, build_dir, "--no-build")
    assert result.returncode == 0, result.stderr
    return artifacts, serve(build_dir / "ensemble_model" / "context" / "model_repository", build_dir / "server.log",
                            build_dir)


def snippet_texts(code: str) -> list[str]:
    """The texts a snippet sends: the rows of its np.array(...) literal, in order."""
    call = next(node for node in ast.walk(ast.parse(code))
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "array")
    texts = []
    for row in call.args[0].elts:
        (value,) = [node.value for node in ast.walk(row) if isinstance(node, ast.Constant)
                    and isinstance(node.value, (str, bytes))]
        texts.append(value.decode() if isinstance(value, bytes) else value)
    return texts


@pytest.mark.parametrize("module, address", [("tritonclient.http", "localhost:8000"),
                                             ("tritonclient.grpc", "localhost:8001")])
def test_python_snippet_prints_decoded_labels_like_pytorch(served, module: str, address: str) -> None:
    artifacts, server = served
    (code,) = [block for block in code_blocks("python") if f"import numpy as np, {module} " in block]
    assert address in code, f"the {module} snippet does not talk to {address}"
    url = server.http_url if address.endswith("8000") else server.grpc_url
    result = subprocess.run([sys.executable, "-c", code.replace(address, url)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "b'" not in result.stdout and 'b"' not in result.stdout, f"labels printed as bytes:\n{result.stdout}"

    texts = snippet_texts(code)
    max_length = int(re.search(r'"max_sequence_length": (\d+)',
                               (artifacts.out_dir / "conversion_report.json").read_text()).group(1))
    expected = pytorch_probabilities(artifacts.hf_dir, texts, max_length)
    printed = [line.rsplit(" ", 1) for line in result.stdout.splitlines()]
    assert [label for label, _ in printed] == labels_of(expected, artifacts.labels()), result.stdout
    for (_, score), row in zip(printed, expected):
        assert abs(float(score) - row.max()) <= 6e-4, (score, row)  # printed rounded to 3 decimals
