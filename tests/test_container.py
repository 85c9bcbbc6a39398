"""The image, built and run for real: a tiny classifier goes through make_triton_image.sh onto the
stand-in Triton base (docker/standin/, offline from a wheelhouse), runs as the README says, and answers.

Needs a Docker engine: one is started with docker/engine.sh when none answers (and stopped afterwards);
where none can run, every test here is skipped with the reason."""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import ROOT, Artifacts, make_image
from docker_helpers import (Container, Engine, EngineUnavailable, build_standin, docker,
                            download_wheelhouse, image_python_version, localize_run_command,
                            readme_docker_run, scan_image)
from local_triton import free_ports
from reference import labels_of, pytorch_probabilities

MODEL_NAME = "ensemble_model"
TOLERANCE = 1e-4
TEXTS = ["помогите мне", "where is my order", "I want a refund for this item", "спасибо за помощь 🙂"]
STOP_LIMIT_S = 30
# Set in make_triton_image.sh's environment: neither may end up anywhere in the image.
SECRET_VARIABLES = ("HF_TOKEN", "CLEARML_API_SECRET_KEY", "CLEARML_API_ACCESS_KEY")


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    try:
        started = Engine.ensure()
    except EngineUnavailable as error:
        pytest.skip(f"no Docker engine can run here, container test not run: {error}")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def standin(engine: Engine) -> str:
    return build_standin()


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    return {name: f"tritoned-secret-{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_VARIABLES}


@pytest.fixture(scope="module")
def built(standin: str, tiny_artifacts, secrets: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Artifacts, Path]]:
    """(image, artifacts, assembled repository): built by make_triton_image.sh --base-image STANDIN
    --wheelhouse DIR with credentials in its environment; the image is removed afterwards."""
    artifacts = tiny_artifacts("bert")
    work = tmp_path_factory.mktemp("container")
    wheelhouse = download_wheelhouse(ROOT / "requirements-serving.txt", work / "wheels",
                                     image_python_version(standin))
    tag = f"containertest-{uuid.uuid4().hex[:10]}"
    result = make_image(artifacts, work / "build", "--base-image", standin, "--wheelhouse", str(wheelhouse),
                        MODEL_NAME, tag, env=secrets)
    assert result.returncode == 0, result.stderr[-6000:]
    image = f"{MODEL_NAME}:{tag}"
    yield image, artifacts, work / "build" / MODEL_NAME / "context" / "model_repository"
    docker("rmi", "-f", image, check=False)


@pytest.fixture(scope="module")
def container(built: tuple[str, Artifacts, Path]) -> Iterator[Container]:
    """The image run with the README's `docker run` line (detached, ports on free host ports)."""
    image = built[0]
    host_ports = dict(zip((8000, 8001, 8002), free_ports(3)))
    name = f"tritoned-test-{uuid.uuid4().hex[:10]}"
    command = localize_run_command(readme_docker_run(ROOT / "README.md", MODEL_NAME), image, name, host_ports)
    assert any(word.startswith("--shm-size") for word in command), f"README's docker run sets no --shm-size: {command}"
    running = Container(command=command, name=name, host_ports=host_ports).start()
    try:
        running.wait_ready()
        yield running
    finally:
        running.remove()


@pytest.fixture(scope="module")
def expected(built: tuple[str, Artifacts, Path]) -> dict[str, np.ndarray]:
    """PyTorch's probabilities for TEXTS, truncated as the served preprocessing truncates."""
    _, artifacts, repository = built
    config = (repository / "text_preprocessing" / "config.pbtxt").read_text()
    max_length = int(re.search(r'max_sequence_length".*?string_value: "(\d+)"', config, re.S).group(1))
    probabilities = pytorch_probabilities(artifacts.hf_dir, TEXTS, max_length)
    return dict(zip(TEXTS, probabilities))


def readme_curl() -> str:
    lines = [line.strip() for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()]
    return next(line for line in lines if line.startswith("curl") and "/infer" in line)


def test_readme_curl_answers_with_the_right_label(container: Container, built, expected) -> None:
    command = readme_curl()
    assert "localhost:8000" in command, command
    command = command.replace("localhost:8000", container.url(8000))
    output = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    body = json.loads(output.stdout)
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    text = json.loads(re.search(r"-d '(.*)'", command).group(1))["inputs"][0]["data"][0]
    want = expected[text]
    id2label = built[1].labels()
    assert outputs["label"] == labels_of(want[None, :], id2label)
    np.testing.assert_allclose(outputs["probabilities"], want, atol=TOLERANCE)


def test_grpc_batch_through_tritonclient(container: Container, built, expected) -> None:
    client = grpcclient.InferenceServerClient(container.url(8001))
    inp = grpcclient.InferInput("text_input", [len(TEXTS), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=np.object_))
    result = client.infer(MODEL_NAME, [inp])
    want = np.stack([expected[t] for t in TEXTS])
    labels = [v.decode() for v in result.as_numpy("label").reshape(-1)]
    assert labels == labels_of(want, built[1].labels())
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=TOLERANCE)
    np.testing.assert_allclose(result.as_numpy("score").reshape(-1), want.max(axis=1), atol=TOLERANCE)


def test_healthcheck_reports_healthy(container: Container) -> None:
    status = container.wait_health()
    assert status == "healthy", f"health {status!r}: {container.state().get('Health')}"


def test_server_runs_as_non_root(container: Container) -> None:
    top = docker("top", container.name, "-eo", "uid,pid,comm").stdout.splitlines()[1:]
    processes = [(uid, comm) for uid, _, comm in (line.split(None, 2) for line in top if line.strip())]
    assert any("tritonserver" in comm for _, comm in processes), top
    assert all(uid != "0" for uid, _ in processes), f"processes running as root: {top}"
    status = container.exec("cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    assert "0" not in uids, f"PID 1 uids {uids}"


def test_model_repository_is_read_only_for_the_server_user(container: Container) -> None:
    # docker exec runs as the image's USER: the user the server runs as.
    probe = (
        "import os, sys\n"
        "writable = [p for d, _, fs in os.walk('/models') for p in [d, *(os.path.join(d, f) for f in fs)]"
        " if os.access(p, os.W_OK)]\n"
        "count = sum(1 + len(fs) for _, _, fs in os.walk('/models'))\n"
        "print(os.getuid(), count, writable)\n"
        "sys.exit(1 if writable or count < 8 else 0)\n"
    )
    result = container.exec("python3", "-c", probe)
    assert result.returncode == 0, f"uid, entries, writable: {result.stdout} {result.stderr}"
    assert not result.stdout.startswith("0 "), "docker exec ran as root: the image's USER is root"
    for target in ("/models/new_file", f"/models/{MODEL_NAME}/config.pbtxt"):
        attempt = container.exec("sh", "-c", f"echo x >> {target}")
        assert attempt.returncode != 0, f"{target} could be written"


def test_image_has_no_torch(container: Container) -> None:
    probe = ("import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)")
    assert container.exec("python3", "-c", probe).returncode == 0, "python3 in the image imports torch"
    found = container.exec("sh", "-c", "find / -xdev \\( -name torch -o -name 'torch-*.dist-info' \\) -print")
    assert found.stdout.strip() == "", f"torch in the image: {found.stdout}"


def test_no_build_environment_credentials_in_image(built, secrets: dict[str, str]) -> None:
    image, artifacts, _ = built
    control = artifacts.id2label.read_bytes().strip()  # copied verbatim into the image's repository
    markers = [value.encode() for value in secrets.values()]
    found = scan_image(image, [control, *markers])
    assert found[control], "scan found not even the id2label labels: the scan is broken"
    leaked = [name for name, value in secrets.items() if found[value.encode()]]
    assert not leaked, f"credentials from the build environment found in the image: {leaked}"
    history = docker("history", "--no-trunc", image).stdout + docker("inspect", image).stdout
    assert not [name for name in secrets if name in history], "credential variable names in image metadata"


def test_docker_stop_ends_it_within_30s(container: Container) -> None:
    """Last: stops the container. A clean exit (0) means Triton handled SIGTERM, not a SIGKILL."""
    started = time.monotonic()
    docker("stop", "-t", str(STOP_LIMIT_S + 5), container.name, timeout=STOP_LIMIT_S + 30)
    elapsed = time.monotonic() - started
    state = container.state()
    assert elapsed < STOP_LIMIT_S, f"docker stop took {elapsed:.1f}s"
    assert state["ExitCode"] == 0 and not state["OOMKilled"], f"{state}\n{container.logs()}"
