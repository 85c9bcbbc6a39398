"""Shared fixtures: tiny models converted by utils/convert_to_onnx.py, assembled repositories, servers."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_triton import LocalTriton  # noqa: E402
from tiny_models import BUILDERS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Artifacts:
    """What utils/convert_to_onnx.py writes, plus the Hugging Face model it came from."""

    hf_dir: Path
    out_dir: Path

    @property
    def model(self) -> Path:
        return self.out_dir / "model.onnx"

    @property
    def tokenizer(self) -> Path:
        return self.out_dir / "tokenizer"

    @property
    def id2label(self) -> Path:
        return self.out_dir / "id2label.json"

    def labels(self) -> dict[str, str]:
        return json.loads(self.id2label.read_text(encoding="utf-8"))


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)


def convert_local(hf_dir: Path, out_dir: Path) -> Artifacts:
    result = run([sys.executable, "utils/convert_to_onnx.py", "--model", str(hf_dir),
                  "--model-storage", "local", "--output-dir", str(out_dir)])
    assert result.returncode == 0, result.stderr[-4000:]
    return Artifacts(hf_dir=hf_dir, out_dir=out_dir)


def backend_stub_count(repository: Path) -> int:
    """How many backend stub processes a served repository runs: the instance counts of its models as the gateway
    sizes them at start (gateway/sizing.py; make_triton_image.sh --model-instances / --preprocessing-instances;
    the ensemble itself has none)."""
    from gateway.sized_repository import sized_config
    from gateway.manifest import FILE_NAME
    from gateway.sizing import build_sizing, choose, find_cpus

    sizes = None
    if (repository / FILE_NAME).is_file():  # served as the gateway sizes it for this process's CPUs
        sizes, _ = choose(find_cpus(), build_sizing(repository))
    total = 0
    for config in repository.glob("*/config.pbtxt"):
        text = config.read_text(encoding="utf-8")
        if sizes is not None:
            text = sized_config(config.parent.name, text, sizes, str(config))
        total += sum(int(count) for count in re.findall(r"\bcount:\s*(\d+)", text))
    return total


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Artifacts]:
    """tiny_artifacts("bert") -> a tiny model of that architecture, converted once per session."""
    cache: dict[str, Artifacts] = {}

    def build(kind: str) -> Artifacts:
        if kind not in cache:
            base = tmp_path_factory.mktemp(f"tiny-{kind}")
            cache[kind] = convert_local(BUILDERS[kind](base / "hf"), base / "converted")
        return cache[kind]

    return build


def make_image(artifacts: Artifacts, build_dir: Path, *extra: str, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess:
    """./make_triton_image.sh [extra...] MODEL TOKENIZER ID2LABEL with build/ redirected to build_dir."""
    return run([str(ROOT / "make_triton_image.sh"), str(artifacts.model), str(artifacts.tokenizer),
                str(artifacts.id2label), *extra],
               env={**os.environ, "TRITONED_BUILD_DIR": str(build_dir), "TRITONED_PYTHON": sys.executable,
                    **(env or {})})


def run_bench_tool(script: str, argv: list[str], work_dir: Path) -> subprocess.CompletedProcess:
    """bench/SCRIPT ARGV --work-dir WORK_DIR, as bench/run.sh runs it (at most 60 s)."""
    return run([sys.executable, str(ROOT / "bench" / script), *argv, "--work-dir", str(work_dir)], timeout=60)


# ------------------------------------------------------------------ the stand-in image, built once per session

IMAGE_MODEL_NAME = "ensemble_model"
# Set in make_triton_image.sh's environment when the image is built: neither may end up anywhere in the image.
SECRET_VARIABLES = ("HF_TOKEN", "CLEARML_API_SECRET_KEY", "CLEARML_API_ACCESS_KEY")


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker engine that answers (started with docker/engine.sh when none does, stopped at the end); where
    none can run, every test that needs it is skipped with the reason."""
    from docker_helpers import Engine, EngineUnavailable

    try:
        started = Engine.ensure()
    except EngineUnavailable as error:
        pytest.skip(f"no Docker engine can run here, container test not run: {error}")
    yield started
    started.stop()


@pytest.fixture(scope="session")
def standin_image(docker_engine) -> str:
    """The stand-in Triton base image's name (docker/standin/, cached by a hash of its inputs)."""
    from docker_helpers import build_standin

    return build_standin()


@pytest.fixture(scope="session")
def serving_wheelhouse(standin_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """requirements-serving.txt's wheels for the stand-in's Python (make_triton_image.sh --wheelhouse)."""
    from docker_helpers import download_wheelhouse, image_python_version

    return download_wheelhouse(ROOT / "requirements-serving.txt", tmp_path_factory.mktemp("wheels"),
                               image_python_version(standin_image))


@pytest.fixture(scope="session")
def image_secrets() -> dict[str, str]:
    """SECRET_VARIABLES' values in the build environment of classifier_image."""
    import uuid

    return {name: f"tritoned-secret-{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_VARIABLES}


@pytest.fixture(scope="session")
def classifier_image(standin_image: str, serving_wheelhouse: Path, tiny_artifacts, image_secrets: dict[str, str],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Artifacts, Path]]:
    """(image, artifacts, assembled repository): the tiny BERT built by make_triton_image.sh --standin --wheelhouse
    DIR with image_secrets in its environment; one build for every module that runs it (test_container,
    test_container_sizing, test_helm_pod), removed at the end of the session."""
    import uuid

    from docker_helpers import docker

    artifacts = tiny_artifacts("bert")
    work = tmp_path_factory.mktemp("container")
    tag = f"containertest-{uuid.uuid4().hex[:10]}"
    result = make_image(artifacts, work / "build", "--standin", "--wheelhouse", str(serving_wheelhouse),
                        IMAGE_MODEL_NAME, tag, env=image_secrets)
    assert result.returncode == 0, result.stderr[-6000:]
    assert f"from {standin_image}" in result.stderr, "--standin did not build on the stand-in base"
    image = f"{IMAGE_MODEL_NAME}:{tag}"
    yield image, artifacts, work / "build" / IMAGE_MODEL_NAME / "context" / "model_repository"
    docker("rmi", "-f", image, check=False)


def http(address: str, method: str, path: str, body: dict | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body text) of one HTTP request to address (host:port); an error status is returned, not raised."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def build_serve_and_ask(out_dir: Path, start: Callable[..., LocalTriton], build_dir: Path,
                        texts: list[str]) -> tuple[list[str], "np.ndarray"]:
    """A converter output through make_triton_image.sh --no-build and the local Triton: (labels, probabilities)
    of `texts`, one request each."""
    import numpy as np
    import tritonclient.http as httpclient

    result = make_image(Artifacts(hf_dir=out_dir, out_dir=out_dir), build_dir, "--no-build")
    assert result.returncode == 0, result.stderr
    server = start(build_dir / "ensemble_model" / "context" / "model_repository", build_dir / "server.log", build_dir)
    client = httpclient.InferenceServerClient(server.http_url)
    labels, rows = [], []
    for text in texts:
        inp = httpclient.InferInput("text_input", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        answer = client.infer("ensemble_model", [inp])
        labels.append(answer.as_numpy("label").reshape(-1)[0].decode())
        rows.append(answer.as_numpy("probabilities")[0])
    server.stop()
    return labels, np.stack(rows)


@pytest.fixture(scope="session")
def stopping() -> Iterator[list[LocalTriton]]:
    """Servers sent their Ctrl-C at the end of their module, waited for (and whatever is left killed) at the end of
    the session: a stop drains and unloads for ~6 s, mostly waiting, and the next modules run meanwhile."""
    servers: list[LocalTriton] = []
    yield servers
    for server in servers:
        server.stop(send=False)


def local_server(repository: Path, log: Path, build_dir: Path, extra_args: list[str] | None = None) -> LocalTriton:
    """A LocalTriton of `repository` (not started) whose serve_local.sh writes to build_dir."""
    env = {"TRITONED_BUILD_DIR": str(build_dir), "TRITONED_PYTHON": sys.executable,
           "PATH": os.environ.get("PATH", "")}
    return LocalTriton(repository=repository, log=log, extra_args=extra_args or [], env=env)


@pytest.fixture(scope="module")
def serve(stopping: list[LocalTriton]) -> Iterator[Callable[..., LocalTriton]]:
    """serve(repository, log, build_dir) -> a started LocalTriton, sent its Ctrl-C at module end (stopping)."""
    servers: list[LocalTriton] = []

    def start(repository: Path, log: Path, build_dir: Path, extra_args: list[str] | None = None) -> LocalTriton:
        server = local_server(repository, log, build_dir, extra_args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.ctrl_c()
    stopping.extend(servers)


@dataclass(frozen=True)
class SharedServer:
    """A server several modules send requests to (and nothing else: none restarts, kills or reconfigures it)."""

    server: LocalTriton
    artifacts: Artifacts
    repository: Path


@pytest.fixture(scope="session")
def default_bert(tiny_artifacts, tmp_path_factory: pytest.TempPathFactory,
                 stopping: list[LocalTriton]) -> Iterator[SharedServer]:
    """The tiny BERT assembled by make_triton_image.sh --no-build with its defaults and served, once per session
    for the modules that only send it requests (test_docs_apis, test_hostile_requests, test_malformed_requests):
    one start instead of one per module."""
    artifacts = tiny_artifacts("bert")
    build_dir = tmp_path_factory.mktemp("build-default-bert")
    result = make_image(artifacts, build_dir, "--no-build")
    assert result.returncode == 0, result.stderr
    repository = build_dir / "ensemble_model" / "context" / "model_repository"
    server = local_server(repository, build_dir / "server.log", build_dir)
    try:
        yield SharedServer(server.start(), artifacts, repository)
    finally:
        server.ctrl_c()
        stopping.append(server)


def bytes_input(module, name: str, values: list) -> object:
    """A [n, 1] BYTES input of tritonclient's `module` (tritonclient.http or .grpc); str values are UTF-8 encoded."""
    import numpy as np

    data = np.array([[value.encode() if isinstance(value, str) else value] for value in values], dtype=np.object_)
    tensor = module.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def infer_items(module, client, model: str, items: list, outputs: list | None = None):
    """One request of `items`: texts (text_input), or (text, text_pair) pairs (text_input and text_pair)."""
    inputs = [bytes_input(module, "text_input", [item if isinstance(item, str) else item[0] for item in items])]
    if items and not isinstance(items[0], str):
        inputs.append(bytes_input(module, "text_pair", [item[1] for item in items]))
    return client.infer(model, inputs, outputs=outputs)


CRASH_SIGNS = ("Stub process is unhealthy", "terminate called", "Non-graceful termination", "Aborted",
               "Segmentation fault")


def assert_log_shows_no_crash(server: LocalTriton, extra: tuple[str, ...] = ()) -> None:
    """Nothing made a backend stub or the server abort (its log has none of the signs, nor of `extra`)."""
    import time

    time.sleep(0.2)
    log = server.log.read_text(errors="replace")
    for sign in CRASH_SIGNS + extra:
        assert sign not in log, sign


def client_of(server: LocalTriton, protocol: str):
    """A tritonclient of `server` over "http" or "grpc"."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url, network_timeout=120, connection_timeout=120)
    return grpcclient.InferenceServerClient(server.grpc_url)


@dataclass
class ServedModel:
    """A tiny model of one kind, assembled by make_triton_image.sh --no-build and served by the local Triton, with
    transformers' pipeline answers (reference.Expected) to the items it is asked: texts, or (text, text_pair)."""

    kind: str
    artifacts: Artifacts
    server: LocalTriton
    repository: Path
    expected: dict
    multi_label: bool
    tolerance: float

    def client(self, protocol: str):
        return client_of(self.server, protocol)

    def check(self, items: list, result) -> None:
        """The served outputs of `items` (one request, tritonclient result) are the pipeline's answers."""
        from reference import assert_answers

        assert_answers(result, [self.expected[item] for item in items], self.tolerance, self.multi_label)


def serve_model(kind: str, items: list, options: list[str], tiny_artifacts, serve, tmp_path_factory,
                threshold: float = 0.5, multi_label: bool = False, tolerance: float = 1e-4) -> ServedModel:
    """tiny_artifacts(kind) through make_triton_image.sh --no-build OPTIONS, served, and the pipeline's answers to
    `items` (truncated to the served max_sequence_length)."""
    from bench.local_server import max_sequence_length
    from reference import expected_outputs, pipeline_answers

    artifacts = tiny_artifacts(kind)
    build_dir = tmp_path_factory.mktemp(f"build-{kind}")
    result = make_image(artifacts, build_dir, "--no-build", *options)
    assert result.returncode == 0, result.stderr
    repository = build_dir / "ensemble_model" / "context" / "model_repository"
    server = serve(repository, build_dir / "server.log", build_dir)
    answers = pipeline_answers(artifacts.hf_dir, items, max_sequence_length(repository))
    expected = {item: expected_outputs(answer, artifacts.labels(), threshold) for item, answer in zip(items, answers)}
    return ServedModel(kind, artifacts, server, repository, expected, multi_label, tolerance)
