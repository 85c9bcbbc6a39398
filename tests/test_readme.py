"""The documentation's own commands and snippets, taken from README.md, docs/**/*.md and the Helm chart's README as
they are written (never copied here): the README's flow runs in a fresh clone and ends with a clean `git status`
after ./cleanup.sh, and the English quick start shows the same flow; every directory the examples write to lies in
build/ and cannot be taken by a model's name; the Python snippets (HTTP and gRPC) answer against the real local
Triton with decoded labels, as PyTorch does (docs/apis.md's InferenceClient snippet and curls, which the README
repeats, run in tests/test_docs_apis.py); the sizing page's commands show the sizes of its table; each kind of
model in docs/models.md converts, builds and serves by its commands, and its curl answers as the HF pipeline does;
docs/image.md's builds (NGC, offline from a wheelhouse, the demo model on the stand-in) assemble as written, their
wheelhouses for the base's Python; the metrics page's command shows the series it promises. Every command of every
bash block in those files is run here or listed in ELSEWHERE with where it runs instead or why it cannot run here."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, Artifacts, http, make_image
from local_triton import LocalTriton
from reference import expected_outputs, labels_of, pipeline_answers, pytorch_probabilities
from tiny_models import BUILDERS

README = ROOT / "README.md"
ENGLISH = Path("docs") / "en" / "quickstart.md"  # relative: read in ROOT or in a fresh clone
MODELS = Path("docs") / "models.md"
IMAGE = Path("docs") / "image.md"
METRICS = Path("docs") / "metrics.md"
SIZING = Path("docs") / "sizing.md"
APIS = Path("docs") / "apis.md"
STANDIN_SCRIPT = ROOT / "docker" / "standin" / "build_standin.sh"
NO_DOCKER_ENGINE = "unix:///nonexistent/docker.sock"  # `docker info` fails: make_triton_image.sh builds no image


def code_blocks(language: str, readme: Path = README) -> list[str]:
    """The README's fenced code blocks in `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", readme.read_text(encoding="utf-8"), re.S | re.M)


def documents(root: Path = ROOT) -> list[Path]:
    """Every file of the documentation: the README, docs/ and the Helm chart's README."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md")),
            root / "deploy" / "helm" / "tritoned-bert" / "README.md"]


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


def page_commands(page: Path) -> list[list[str]]:
    """The commands of every bash block of a page, in order."""
    return [command for block in code_blocks("bash", page) for command in commands(block)]


def own_model_steps(readme: Path) -> list[list[str]]:
    """A page's "your own model" block: checkpoint -> conversion -> image -> serving -> cleanup."""
    blocks = [block for block in code_blocks("bash", readme) if "path/to/checkpoint" in block and "./cleanup.sh" in block]
    assert len(blocks) == 1, f"expected one block with the whole flow in {readme}, found {len(blocks)}"
    return commands(blocks[0])


# Commands shown in the documentation that this module does not run: where they run instead, or why they cannot
# run here. A pattern matches the command's words joined by spaces; every entry must still match a shown command.
ELSEWHERE: dict[str, str] = {
    r"\./quickstart\.sh": "fine-tunes the demo model for about 9 minutes; tests/test_build_demo_model.py runs its "
                          "fine-tuning for two steps, the rest of it (convert, assemble, serve) runs here",
    r"\./run_tests\.sh": "the test suite itself",
    r"curl -s -X POST http://localhost:8000/v2/models/ensemble_model/infer .*": "the README's curl: "
        "tests/test_end_to_end.py, tests/test_container.py and tests/test_helm_pod.py run it as written",
    r"docker run --rm --shm-size=256m -p8000:8000 -p8001:8001 -p8002:8002 ensemble_model:latest":
        "tests/test_container.py runs the README's docker run line on the image it builds with --standin --wheelhouse",
    r"docker run --rm --shm-size=256m -e TRITONED_ADMIN_KEY .*": "tests/test_container.py runs the README's docker "
        "run line with -e TRITONED_ADMIN_KEY",
    r"docker run --rm --shm-size=256m -p8000:8000 -p8001:8001 -p8002:8002 (my_intents|intents):v1": "runs the image "
        "the command before it builds: needs a Docker engine (and NGC for my_intents:v1); tests/test_container.py "
        "runs the same line on its stand-in image",
    r"curl -s -X POST http://localhost:8000/v2/models/intents/infer -H .*": "talks to the container of the line "
        "before; the same request to the served intents model is docs/models.md's first curl, run here",
    r"helm install .*": "no cluster here: tests/test_helm_chart.py renders every helm install of the chart's README "
                        "(the one place for Kubernetes) with its --set values, validates and scans what it makes",
    r"kubectl .*": "needs a Kubernetes cluster; tests/test_helm_chart.py checks that the objects named "
                   "(deployment/..., service/...) are the ones helm install makes",
    r"docker (tag|push) .*registry\.example\.com.*": "needs a container registry",
    r"\.venv/bin/python utils/convert_to_onnx\.py --model [0-9a-f]{32} --model-storage clearml .*":
        "needs a ClearML server holding that model; tests/test_storage_clearml.py converts a model id and a task's "
        "artifact the same way from a ClearML-compatible server on 127.0.0.1",
    r"\./bench/run\.sh --quantized --fused": "the full benchmark (about 6.5 minutes); tests/test_bench.py runs "
                                             "bench/run.sh --quick --quantized on a tiny model",
    r"export TRITONED_ADMIN_KEY=\$\(openssl rand -hex 16\)": "tests/test_lockdown.py::"
        "test_local_admin_key_opens_the_restricted_apis serves with a TRITONED_ADMIN_KEY and opens the restricted APIs",
    r"curl -H tritoned-admin-key: \$TRITONED_ADMIN_KEY localhost:8000/v2/logging": "tests/test_lockdown.py::"
        "test_local_admin_key_opens_the_restricted_apis sends this header to /v2/logging",
    r"\S+ .*\[[a-z_-]+\].*": "a usage line: the brackets mark optional arguments",
    r"\./cleanup\.sh --all": "removes .venv, which the tests run from; tests/test_cleanup.py runs ./cleanup.sh",
    # docs/apis.md (and the README's part on the other APIs, the same lines: checked below)
    r"curl -s -X POST http://localhost:8000/(predict|rerank)? -H .*|curl -s http://localhost:8000/info":
        "docs/apis.md's curls: tests/test_docs_apis.py runs each as written against a served classifier and compares "
        "the answers with the pipeline's (/rerank: TEI's 424 there, a classifier is not a cross-encoder)",
    # docs/benchmark.md, docs/front.md
    r"\./bench/run\.sh --sizes .*": "the sizing mode's full runs take 5-12 minutes on 2 cores; tests/test_bench.py "
        "runs ./bench/run.sh --sizes tiny --cores 1 --quick --concurrency 1,16",
    r"\./bench/run\.sh process-cost .*": "a few minutes each; tests/test_process_cost.py runs ./bench/run.sh "
        "process-cost --config on= --config off=--no-model-metrics --protocols http,grpc --quick",
    r"\./bench/run\.sh front-ceiling --workers 1,4,8 --cores 8": "needs a machine with more than 8 cores (the load "
        "generator runs on the others); this one has 2",
    r"\./bench/run\.sh front-ceiling (--quick|--workers 1,2 .*)": "about 2 minutes; tests/test_bench.py runs "
        "./bench/run.sh front-ceiling --quick --workers 1,2",
    r"\.venv/bin/python -m pytest .*": "the tests themselves",
    r"TRITONED_WORKERS=2 \./serve_local\.sh ensemble_model": "tests/test_workers.py serves through serve_local.sh "
        "with TRITONED_WORKERS=2 and checks that both workers serve HTTP and gRPC",
    # docs/sizing.md (its gateway.sizing commands run here)
    r"docker run --rm --shm-size=256m -p8000:8000 -p8001:8001 -p8002:8002 -e TRITONED_CPUS=4 ensemble_model:latest":
        "tests/test_container_sizing.py runs the image with --cpus 1, --cpus 2 and -e TRITONED_CPUS=3 and checks the "
        "start log and the config served",
    r"\./serve_local\.sh --cpus 4 ensemble_model": "tests/test_serve_local.py serves with --cpus 3 and checks the "
        "start log and the config served",
    r"\./make_triton_image\.sh --no-build --model-instances 2 --ort-threads 1 build/demo/onnx/.*":
        "tests/test_make_triton_image.py::test_sizing_options_default_to_auto_and_numbers_are_kept builds with "
        "fixed sizes and checks that the manifest and the rendered config keep them",
}


def listed(command: list[str]) -> str | None:
    """Why a shown command is not run here (ELSEWHERE), or None."""
    line = " ".join(command)
    reasons = [reason for pattern, reason in ELSEWHERE.items() if re.fullmatch(pattern, line)]
    assert len(reasons) <= 1, f"more than one ELSEWHERE entry matches {line}"
    return reasons[0] if reasons else None


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
        if listed(command):
            continue  # docker run: the image the step before would build; see ELSEWHERE
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


def test_the_english_quick_start_shows_the_readme_flow_and_curl() -> None:
    """The English quick start is its own page: the same flow as the README's, which the test above runs, and the
    README's curl, which tests/test_end_to_end.py runs."""
    assert own_model_steps(ROOT / ENGLISH) == own_model_steps(README)
    curls = [command for command in page_commands(ROOT / ENGLISH) if command[0] == "curl"]
    readme_curl = next(command for command in page_commands(README) if command[0] == "curl")
    assert curls and all(curl == readme_curl for curl in curls), curls


def test_every_example_writes_under_build_where_no_model_name_can_land() -> None:
    """The directories the documentation's commands write (--output-dir, pip download -d, the converter output that
    make_triton_image.sh reads) lie in build/, which cleanup.sh removes; and make_triton_image.sh refuses a
    MODEL_NAME equal to one of them, whose build/MODEL_NAME/ would replace it."""
    written = set()
    for page in documents():
        for command in page_commands(page):
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

# Each block of docs/models.md names its artifacts build/artifacts/<kind>; the tiny model that stands in for the
# user's checkpoint. The intents block converts the demo model (build/demo/hf): a tiny single-label one here.
KIND_MODELS = {"intents": "bert", "toxicity": "multi_label", "nli": "nli_bert", "reranker": "reranker"}


def kind_blocks(page: Path = ROOT / MODELS) -> dict[str, list[list[str]]]:
    """The commands of each bash block of the page on kinds of models, by kind."""
    blocks = {}
    for block in code_blocks("bash", page):
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
    within 1e-4, top-k strings of the classification extension in the pipeline's order. The reranker's server also
    answers the README's /rerank curl (TEI's shape, the pipeline's scores)."""
    checkpoint = BUILDERS[KIND_MODELS[kind]](tmp_path / kind)
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRITONED_")}
    steps = kind_blocks(fresh_clone / MODELS)[kind]
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
        if kind == "reranker":
            assert_the_readme_rerank_answers_like_the_pipeline(server, checkpoint, max_length)
    finally:
        assert server.interrupt() == 0, server.log_text()


def assert_the_readme_rerank_answers_like_the_pipeline(server: LocalTriton, checkpoint: Path, max_length: int) -> None:
    """The README's /rerank curl, as written, against the pair model it names (docs/models.md's reranker, served):
    TEI's answer, every text once with its pipeline score, sorted by score, with the text (return_text)."""
    (curl,) = [command for command in page_commands(README) if command[0] == "curl"
               and any(word.endswith("/rerank") for word in command)]
    assert "reranker" in README.read_text(encoding="utf-8"), "the README does not name the model for /rerank"
    result = subprocess.run([word.replace("localhost:8000", server.http_url) for word in curl], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    body = json.loads(curl[curl.index("-d") + 1])
    answer = json.loads(result.stdout)
    pairs = [(body["query"], text) for text in body["texts"]]
    want = [entries[0]["score"] for entries in pipeline_answers(checkpoint, pairs, max_length)]
    assert sorted(rank["index"] for rank in answer) == list(range(len(pairs))), answer
    for rank in answer:
        assert rank["text"] == body["texts"][rank["index"]], answer
        assert abs(rank["score"] - want[rank["index"]]) <= 1e-4, (answer, want)
    ordered = [rank["score"] for rank in answer]
    assert ordered == sorted(ordered, reverse=True), answer


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
    (code,) = [block for page in documents() for block in code_blocks("python", page)
               if f"import numpy as np, {module} " in block]
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


# ------------------------------------------------------------------------------------------ the image page

def test_the_image_pages_wheelhouse_commands_are_the_ones_the_build_prints() -> None:
    """Each pip download on docs/image.md is the command make_triton_image.sh prints for a wheelhouse that does not
    fit its base (utils/check_wheelhouse.py), for the base that Python names: a row of make_triton_image.sh's one
    table of the NGC bases (NGC_PYTHONS), or the stand-in (build_standin.sh --print-python). tests/docker_helpers.py
    fills the container tests' wheelhouse with the same arguments, so those tests build as the page does."""
    from docker_helpers import standin_python
    from utils.check_wheelhouse import Target, download_arguments
    table = re.search(r'^NGC_PYTHONS="([^"]*)"', (ROOT / "make_triton_image.sh").read_text(), re.M).group(1)
    bases = {python: Target(python, platform) for _, python, platform in (row.split() for row in table.splitlines())}
    standin = standin_python()
    bases[standin.python] = standin
    shown = [command for command in page_commands(ROOT / IMAGE) if command[0].endswith("pip")]
    assert {command[command.index("--python-version") + 1] for command in shown} >= {"3.12", standin.python}, shown
    for command in shown:
        assert command[1] == "download", command
        words = command[2:]
        version, dest = words[words.index("--python-version") + 1], words[words.index("-d") + 1]
        assert version in bases, f"{command}: no base of make_triton_image.sh runs Python {version}"
        expected = download_arguments(bases[version], Path("requirements-serving.txt"), Path(dest))
        assert [os.path.normpath(word) if word == dest else word for word in words] == expected, command


def wheel_fits(filename: str, version: str) -> bool:
    """Whether a wheel installs on CPython `version` (major.minor), by its Python and ABI tags."""
    python_tags, abi_tags = (part.split(".") for part in filename[:-len(".whl")].split("-")[-3:-1])
    cpython = int(version.replace(".", ""))
    for tag in python_tags:
        if tag in ("py3", "py2.py3") or tag == f"cp{cpython}":
            return True
        if tag.startswith("cp3") and "abi3" in abi_tags and int(tag[2:]) <= cpython:
            return True
    return False


def model_name(command: list[str]) -> str:
    """MODEL_NAME of a make_triton_image.sh command line (its fourth positional argument)."""
    positional = []
    words = iter(command[1:])
    for word in words:
        if word == "--wheelhouse":
            next(words)
        elif not word.startswith("-"):
            positional.append(word)
    return positional[3] if len(positional) > 3 else "ensemble_model"


def test_the_image_page_assembles_every_build_as_written(fresh_clone: Path, tiny_artifacts, tmp_path: Path) -> None:
    """docs/image.md's commands in order, in a fresh clone where no Docker engine answers; a tiny converted model
    stands in for the converter's output (build/artifacts) and the quick start's (build/demo/onnx). Each pip download
    fills its wheelhouse with wheels for the Python it names, each make_triton_image.sh assembles its repository and
    says that no image was built (exit 3), a wheelhouse is used only after it was filled, one given with --standin
    was filled for the stand-in's Python (docker/standin/build_standin.sh), and ./cleanup.sh leaves a clean tree."""
    artifacts = tiny_artifacts("bert")
    for target in ("build/artifacts", "build/demo/onnx"):
        shutil.copytree(artifacts.out_dir, fresh_clone / target)
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRITONED_")}
    env["DOCKER_HOST"] = NO_DOCKER_ENGINE
    standin_python = re.search(r'^PYTHON_VERSION="([0-9.]+)"', STANDIN_SCRIPT.read_text(), re.M).group(1)
    wheelhouses: dict[str, str] = {}
    ran: list[str] = []
    for command in page_commands(fresh_clone / IMAGE):
        if listed(command):
            continue
        result = subprocess.run(command, cwd=fresh_clone, env=env, capture_output=True, text=True, timeout=900)
        if command[0].endswith("pip") and command[1] == "download":
            assert result.returncode == 0, (command, result.stderr[-3000:])
            dest, version = command[command.index("-d") + 1], command[command.index("--python-version") + 1]
            wheels = sorted(path.name for path in (fresh_clone / dest).glob("*.whl"))
            assert wheels and all(wheel_fits(wheel, version) for wheel in wheels), (version, wheels)
            wheelhouses[os.path.normpath(dest)] = version
        elif command[0] == "./make_triton_image.sh":
            if "--wheelhouse" in command:
                dest = os.path.normpath(command[command.index("--wheelhouse") + 1])
                assert dest in wheelhouses, f"{command}: the page uses a wheelhouse it did not fill"
                if "--standin" in command:
                    assert wheelhouses[dest] == standin_python, \
                        f"{command}: wheels for Python {wheelhouses[dest]}, the stand-in has {standin_python}"
            assert result.returncode == 3 and "no image was built" in result.stderr, (command, result.stderr[-3000:])
            assert (fresh_clone / "build" / model_name(command) / "context" / "model_repository").is_dir()
        elif command == ["./cleanup.sh"]:
            assert result.returncode == 0, result.stderr
            assert git(fresh_clone, "status", "--porcelain", "--ignored") == "!! .venv\n", "cleanup.sh left files"
        else:
            raise AssertionError(f"docs/image.md shows a command this test does not run: {command}")
        ran.append(command[0].rsplit("/", 1)[-1])
    assert sorted(set(ran)) == ["cleanup.sh", "make_triton_image.sh", "pip"], ran
    assert standin_python in wheelhouses.values(), "the page shows no wheelhouse for the stand-in"


# ------------------------------------------------------------------------------------------ the metrics page

def test_the_metrics_page_command_shows_the_nonzero_series(served) -> None:
    """docs/metrics.md's command, after one request as in the quick start: only tritoned_ series, no buckets, no
    zeros, and the ones the page shows for one text."""
    _, server = served
    (block,) = code_blocks("bash", ROOT / METRICS)
    (line,) = [line for line in block.splitlines() if line.strip()]
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": ["помогите мне"]}]}
    status, answer = http(server.http_url, "POST", "/v2/models/ensemble_model/infer", body)
    assert status == 200, answer
    deadline = time.monotonic() + 10  # the models send their metrics to Triton once a second
    while True:
        result = subprocess.run(["bash", "-c", line.replace("localhost:8002", server.metrics_url)],
                                capture_output=True, text=True, timeout=30)
        shown = result.stdout.splitlines()
        if any(row.startswith("tritoned_texts_tokenized_total{") for row in shown) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert shown and all(row.startswith("tritoned_") and "_bucket" not in row and not row.endswith(" 0")
                         for row in shown), result.stdout
    for series in ("tritoned_texts_tokenized_total{", "tritoned_label_predictions_total{", "tritoned_top_score_count{",
                   "tritoned_text_length_tokens_count{"):
        assert any(row.startswith(series) for row in shown), (series, result.stdout)


# ------------------------------------------------------------------------------------------ the sizing page

def sizing_commands(page: Path = ROOT / SIZING) -> list[list[str]]:
    """docs/sizing.md's commands that show the sizes without starting a server."""
    found = [command for command in page_commands(page) if command[-2:] == ["-m", "gateway.sizing"]]
    assert found, f"{page} shows no python -m gateway.sizing"
    return found


def test_the_sizing_page_commands_show_what_the_server_would_choose() -> None:
    """Each `python -m gateway.sizing` line of docs/sizing.md, as written: the CPUs found (taskset -c 0: one), from
    which sources, and the sizes of the page's table (threads min(N, 8), at least two model_onnx instances)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRITONED_")}
    for command in sizing_commands():
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        report = json.loads(result.stdout)
        if command[0] == "taskset":
            assert report["cpus"] == 1, report
        assert {source["source"] for source in report["sources"]} >= {"sched_getaffinity"}, report
        sizes = report["sizes"]
        assert sizes["ort_threads"] == min(report["cpus"], 8) and sizes["model_instances"] >= 2, report


# ------------------------------------------------------------------------------------------ the other APIs

def test_the_readme_shows_the_api_pages_own_curls_and_client_snippet() -> None:
    """The README's part on the Hugging Face and TEI APIs shows lines of docs/apis.md, which tests/test_docs_apis.py
    runs as written: a curl per API (the HF JSON, TEI /predict and /rerank) and the InferenceClient snippet."""
    api_curls = [command for command in page_commands(ROOT / APIS) if command[0] == "curl"]
    readme_curls = [command for command in page_commands(README) if command[0] == "curl"
                    and "/v2/models/" not in " ".join(command)]
    paths = {word.replace("http://localhost:8000", "") for command in readme_curls for word in command
             if word.startswith("http://localhost:8000")}
    assert paths == {"/", "/predict", "/rerank"}, paths
    assert all(command in api_curls for command in readme_curls), readme_curls
    (client,) = [block for block in code_blocks("python", README) if "InferenceClient" in block]
    assert code_blocks("python", ROOT / APIS) == [client]


# ------------------------------------------------------------------------------------------ every command shown

def commands_run_here(root: Path = ROOT) -> set[tuple[str, ...]]:
    """The commands this module's tests run: the README's flow, each kind's block, the image and metrics pages'."""
    kinds = [step for steps in kind_blocks(root / MODELS).values() for step in steps]
    run = [*own_model_steps(root / "README.md"), *kinds, *page_commands(root / IMAGE), *page_commands(root / METRICS),
           *sizing_commands(root / SIZING)]
    return {tuple(command) for command in run if not listed(command)}


def test_every_command_shown_is_run_here_or_listed_with_a_reason() -> None:
    """Each command of each bash block of the README, docs/ and the chart's README is run by this module or named in
    ELSEWHERE (run by another test, or not runnable here and why); no ELSEWHERE entry outlives its command; and
    the only Python blocks are the two tritonclient snippets run above and docs/apis.md's InferenceClient snippet
    (run by tests/test_docs_apis.py; the README shows the same)."""
    run_here = commands_run_here()
    shown = [(page.relative_to(ROOT), command) for page in documents() for command in page_commands(page)]
    unaccounted = [f"{page}: {' '.join(command)}" for page, command in shown
                   if tuple(command) not in run_here and not listed(command)]
    assert not unaccounted, "commands neither run nor listed in ELSEWHERE:\n" + "\n".join(unaccounted)
    stale = [pattern for pattern in ELSEWHERE if not any(re.fullmatch(pattern, " ".join(c)) for _, c in shown)]
    assert not stale, f"ELSEWHERE entries no page shows any more: {stale}"
    snippets = [block for page in documents() for block in code_blocks("python", page)]
    tritonclient = [block for block in snippets if "import numpy as np, tritonclient." in block]
    (inference_client,) = code_blocks("python", ROOT / APIS)
    others = [block for block in snippets if block not in tritonclient and block != inference_client]
    assert len(tritonclient) == 2 and not others, others
