"""Faults, with the real local Triton: a server killed with SIGKILL restarts cleanly (and the shared memory it
left behind is removed, nobody else's), a model.onnx that is corrupt or missing makes the server say so and
never serve, and make_triton_image.sh runs for several models never mix their files."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import Artifacts, backend_stub_count, make_image
from local_triton import LocalTriton, free_ports
from reference import labels_of, pytorch_probabilities

MODEL_NAME = "ensemble_model"
TEXTS = ["where is my order", "помогите мне", "thank you very much"]
TOLERANCE = 1e-6  # see test_bad_requests.py: the tiny model's answers for different texts differ by ~1e-5
EXIT_TIMEOUT_S = 60
SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def bert(tiny_artifacts) -> Artifacts:
    return tiny_artifacts("bert")


@pytest.fixture(scope="module")
def repository(bert: Artifacts, tmp_path_factory) -> Path:
    build_dir = tmp_path_factory.mktemp("build-faults")
    result = make_image(bert, build_dir, "--no-build")
    assert result.returncode == 0, result.stderr
    return build_dir / MODEL_NAME / "context" / "model_repository"


@pytest.fixture
def private_repository(repository: Path, tmp_path: Path) -> Path:
    """A copy of the assembled repository for one test to break."""
    copy = tmp_path / "model_repository"
    shutil.copytree(repository, copy)
    return copy


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., LocalTriton]]:
    """launch(repository, name, ports=None, extra_args=(), wait=True) -> LocalTriton; all stopped at the end."""
    servers: list[LocalTriton] = []

    def start(repository: Path, name: str, ports: list[int] | None = None, extra_args: tuple[str, ...] = (),
              wait: bool = True) -> LocalTriton:
        args = [*extra_args]
        if ports:  # serve_local.sh takes the last value of an option: these win over LocalTriton's own ports
            args = ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
                    *args]
        env = {"TRITONED_BUILD_DIR": str(tmp_path / "build"), "TRITONED_PYTHON": sys.executable,
               "PATH": os.environ.get("PATH", "")}
        server = LocalTriton(repository=repository, log=tmp_path / f"{name}.log", extra_args=args, env=env)
        servers.append(server)
        server.start(wait=False)
        if ports:
            server.http_port, server.grpc_port, server.metrics_port = ports
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def expected_probabilities(artifacts: Artifacts) -> np.ndarray:
    max_length = json.loads((artifacts.out_dir / "conversion_report.json").read_text())["max_sequence_length"]
    return pytorch_probabilities(artifacts.hf_dir, TEXTS, max_length)


def assert_answers_right(server: LocalTriton, artifacts: Artifacts, expected: np.ndarray) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("text_input", [len(TEXTS), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=np.object_))
    result = client.infer(MODEL_NAME, [inp])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=TOLERANCE, rtol=0)
    assert [v.decode() for v in result.as_numpy("label").reshape(-1)] == labels_of(expected, artifacts.labels())


def group_processes(group: int) -> dict[int, str]:
    """pid -> command name of every process in a process group."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue
        comm, fields = rest.rsplit(") ", 1)
        if int(fields.split()[2]) == group:
            found[int(pid)] = comm
    return found


def pid_namespace() -> str:
    return "".join(c for c in os.readlink("/proc/self/ns/pid") if c.isdigit())


def shm_regions(gateway_pid: int) -> list[Path]:
    """The Python backend's shared-memory regions of one server started by serve_local.sh (named for the gateway
    that runs its tritonserver)."""
    return sorted(SHM.glob(f"tritoned_shm_{pid_namespace()}_{gateway_pid}_*"))


def wait_gone(group: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while group_processes(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_processes(group), f"still running after SIGKILL: {group_processes(group)}"


# --- (a) SIGKILL --------------------------------------------------------------------------------------------

@pytest.mark.skipif(not SHM.is_dir() or not Path("/proc/self/ns/pid").exists(), reason="needs /dev/shm and /proc")
def test_restart_after_sigkill_on_the_same_ports(launch, repository: Path, bert: Artifacts) -> None:
    expected = expected_probabilities(bert)
    ports = free_ports(3)
    first = launch(repository, "first", ports=ports)
    assert_answers_right(first, bert, expected)
    group = first.process.pid
    assert "tritonserver" in group_processes(group).values()
    left_behind = shm_regions(group)  # named for the gateway (serve_local.sh execs it), tritonserver's parent
    assert len(left_behind) == backend_stub_count(repository) >= 3, left_behind  # one per Python backend stub
    # Regions a later start must not touch: one named for a live process (this test), one of another server.
    live = SHM / f"tritoned_shm_{pid_namespace()}_{os.getpid()}_faults-test"
    foreign = SHM / f"triton_python_backend_shm_region_faults-test-{os.getpid()}"
    try:
        live.write_bytes(b"x")
        foreign.write_bytes(b"x")

        os.killpg(group, signal.SIGKILL)  # server, stubs and serve_local.sh at once: nobody can clean up
        first.process.wait(timeout=EXIT_TIMEOUT_S)
        wait_gone(group)
        assert all(region.exists() for region in left_behind), "SIGKILL cannot clean up: expected leftovers"

        second = launch(repository, "second", ports=ports)
        assert_answers_right(second, bert, expected)
        assert not any(region.exists() for region in left_behind), "stale regions of the killed server remain"
        assert live.exists() and foreign.exists(), "a region that is not provably stale was removed"
        log = second.log.read_text(errors="replace")
        for region in left_behind:
            assert f"removed stale {region}" in log, log

        own = shm_regions(second.process.pid)
        assert len(own) == backend_stub_count(repository)
        assert second.interrupt() == 0, second.log_text()
        assert not any(region.exists() for region in own), "a clean stop leaves no shared memory"
    finally:
        live.unlink(missing_ok=True)
        foreign.unlink(missing_ok=True)


# --- (b) a corrupt or missing model.onnx ----------------------------------------------------------------------

def wait_exit(server: LocalTriton) -> tuple[int, bool]:
    """Waits for the server to exit by itself; returns (exit status, whether it was ever ready)."""
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    ever_ready = False
    while server.process.poll() is None and time.monotonic() < deadline:
        ever_ready |= server.is_ready()
        time.sleep(0.2)
    assert server.process.poll() is not None, f"still running with a broken model:\n{server.log_text()}"
    return server.process.returncode, ever_ready


def test_corrupt_model_onnx_stops_the_server_loudly(launch, private_repository: Path) -> None:
    """serve_local.sh runs Triton with --exit-on-error=true: a model that fails to load ends the server."""
    model = private_repository / "model_onnx" / "1" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000] + os.urandom(1000))  # cut short, garbage after
    server = launch(private_repository, "corrupt", wait=False)
    status, ever_ready = wait_exit(server)
    log = server.log.read_text(errors="replace")
    assert status != 0 and not ever_ready, log[-4000:]
    assert "failed to load 'model_onnx'" in log, log[-4000:]
    assert f"Load model from {model} failed" in log and "Protobuf parsing failed" in log, log[-4000:]
    assert "failed to load all models" in log, log[-4000:]


def is_live(client: httpclient.InferenceServerClient) -> bool:
    try:
        return client.is_server_live()
    except (OSError, InferenceServerException):
        return False


def test_missing_model_onnx_never_serves(launch, private_repository: Path, bert: Artifacts) -> None:
    """A model.onnx deleted under a running server changes nothing (the model is in memory, and models are
    never reloaded: --model-control-mode=none); on the next start the server is not ready and says why.
    With --exit-on-error=false it stays up, not ready, and every request gets an error, never an answer."""
    expected = expected_probabilities(bert)
    model = private_repository / "model_onnx" / "1" / "model.onnx"
    running = launch(private_repository, "running")
    model.unlink()
    assert_answers_right(running, bert, expected)
    assert running.interrupt() == 0, running.log_text()

    server = launch(private_repository, "missing", extra_args=("--", "--exit-on-error=false"), wait=False)
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while "ONNX model file not found" not in server.log.read_text(errors="replace"):
        assert time.monotonic() < deadline and server.process.poll() is None, server.log_text()
        time.sleep(0.2)
    client = httpclient.InferenceServerClient(server.http_url)
    while not is_live(client):  # up, but not ready
        assert time.monotonic() < deadline and server.process.poll() is None, server.log_text()
        time.sleep(0.2)
    log = server.log.read_text(errors="replace")
    assert f"ONNX model file not found: {model}" in log and "failed to load 'model_onnx'" in log, log[-4000:]

    assert not server.is_ready()
    assert not client.is_model_ready("model_onnx") and not client.is_model_ready(MODEL_NAME)
    log = server.log.read_text(errors="replace")  # no "ready" banner, no curl for a model that is not loaded
    assert "Triton is ready" not in log and "curl" not in log, log[-3000:]
    inp = httpclient.InferInput("text_input", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[TEXTS[0].encode()]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL_NAME, [inp])
    assert MODEL_NAME in raised.value.message(), raised.value.message()


# --- (c) make_triton_image.sh for several models ---------------------------------------------------------

def relabelled(artifacts: Artifacts, out: Path) -> Artifacts:
    """The same files with other label names: a second model whose every file can be told apart."""
    shutil.copytree(artifacts.out_dir, out)
    other = Artifacts(hf_dir=artifacts.hf_dir, out_dir=out)
    other.id2label.write_text(json.dumps({k: f"other_{v}" for k, v in artifacts.labels().items()}))
    config = other.tokenizer / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "tritoned_test_marker": "other"}))
    return other


def assert_built_from(repo: Path, artifacts: Artifacts) -> None:
    assert (repo / "model_onnx" / "1" / "model.onnx").read_bytes() == artifacts.model.read_bytes()
    assert (repo / "post_processing" / "1" / "id2label.json").read_bytes() == artifacts.id2label.read_bytes()
    served_tokenizer = repo / "text_preprocessing" / "1" / "tokenizer"
    for file in served_tokenizer.iterdir():
        assert file.read_bytes() == (artifacts.tokenizer / file.name).read_bytes(), file.name


def test_models_built_side_by_side_and_rebuilt_never_mix(bert: Artifacts, tmp_path: Path) -> None:
    """tests/test_make_triton_image.py covers two models one after the other under one name; here: two names
    side by side, then the first rebuilt, with a stray file in it that must not survive."""
    other = relabelled(bert, tmp_path / "other")
    build = tmp_path / "b"
    for artifacts, name in ((bert, "first"), (other, "second")):
        result = make_image(artifacts, build, "--no-build", name)
        assert result.returncode == 0, result.stderr
    stray = build / "first" / "context" / "model_repository" / "model_onnx" / "1" / "stray.onnx"
    stray.write_bytes(b"left over from an earlier build")
    result = make_image(bert, build, "--no-build", "first")
    assert result.returncode == 0, result.stderr

    assert sorted(p.name for p in build.iterdir()) == ["first", "second"]  # no staging directories left
    assert not stray.exists()
    for artifacts, name in ((bert, "first"), (other, "second")):
        repo = build / name / "context" / "model_repository"
        assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted([name, "model_onnx", "post_processing",
                                                                 "text_preprocessing"])
        assert_built_from(repo, artifacts)
