"""The gateway's worker processes (gateway/workers.py, gateway/worker.py) on the real local server with
TRITONED_WORKERS=2: both serve the public ports, a killed worker is started again while the other serves on, too
many deaths make the gateway exit 1, SIGTERM turns readiness 503 in every worker at once, and a bad worker count is
a usage error."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import ROOT, make_image
from local_triton import LocalTriton, stop_all
from traffic import TEXTS, infer, ready

MODEL = "ensemble_model"


def workers_of(server: LocalTriton) -> list[int]:
    """Pids of the gateway's worker processes (children of the gateway with gateway.worker on their command line)."""
    assert server.process is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == server.process.pid and b"gateway.worker" in command:
            found.append(int(entry.name))
    return sorted(found)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_for(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


@pytest.fixture(scope="module")
def repository(tiny_artifacts, tmp_path_factory) -> Path:
    build_dir = tmp_path_factory.mktemp("build-workers")
    assert make_image(tiny_artifacts("bert"), build_dir, "--no-build").returncode == 0
    return build_dir / MODEL / "context" / "model_repository"


def start(repository: Path, log: Path) -> LocalTriton:
    build_dir = repository.parent.parent.parent
    return LocalTriton(repository=repository, log=log, env={
        "TRITONED_WORKERS": "2", "TRITONED_BUILD_DIR": str(build_dir), "TRITONED_PYTHON": sys.executable,
        "TRITONED_DRAIN_DELAY": "2"}).start()


@pytest.fixture(scope="module")
def server(repository: Path, stopping: list[LocalTriton]) -> LocalTriton:
    started = start(repository, repository.parent.parent.parent / "server.log")
    yield started
    started.ctrl_c()  # waited for at the end of the session (conftest's stopping)
    stopping.append(started)


def grpc_label(server: LocalTriton, text: str) -> str:
    request = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    request.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    answer = grpcclient.InferenceServerClient(server.grpc_url).infer(MODEL, [request])
    return answer.as_numpy("label").reshape(-1)[0].decode()


def test_both_workers_serve_http_and_grpc(server: LocalTriton) -> None:
    workers = workers_of(server)
    assert len(workers) == 2, workers
    before = {pid: cpu_ticks(pid) for pid in workers}
    labels = {infer(server.http_url, TEXTS[i % len(TEXTS)]) for i in range(300)}  # a new connection each
    assert all(labels) and len(labels) >= 1
    assert grpc_label(server, TEXTS[0]) == infer(server.http_url, TEXTS[0])
    busy = [pid for pid in workers if cpu_ticks(pid) - before[pid] >= 2]
    assert busy == workers, f"CPU ticks per worker: { {p: cpu_ticks(p) - before[p] for p in workers} }"


def test_a_killed_worker_is_started_again_and_the_other_serves_on(server: LocalTriton) -> None:
    expected = infer(server.http_url, TEXTS[1])
    first, second = workers_of(server)
    os.kill(first, signal.SIGKILL)
    for _ in range(20):  # connections the kernel gives the dead worker's socket wait for its successor
        assert infer(server.http_url, TEXTS[1]) == expected
    replaced = wait_for(lambda: len(workers_of(server)) == 2 and first not in workers_of(server), 20)
    assert replaced, f"no new worker: {workers_of(server)}\n{server.log_tail()}"
    assert second in workers_of(server)
    assert f"(pid {first}) killed by signal SIGKILL: started worker" in server.log_text()
    assert ready(server.http_url) == 200 and grpc_label(server, TEXTS[1]) == expected


def test_sigterm_turns_readiness_503_in_every_worker(server: LocalTriton) -> None:
    """After SIGTERM, during the drain delay (2 s here), every new connection (spread over both workers by the
    kernel) is told 503; the gateway then exits 0."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGTERM)
    time.sleep(0.3)
    statuses = [ready(server.http_url) for _ in range(60)]  # all on one worker: a chance of 2**-59
    assert statuses == [503] * 60, statuses
    assert server.process.wait(60) == 0
    assert "drained in" in server.log_text()


def test_workers_that_keep_dying_make_the_gateway_exit_1(repository: Path, tmp_path: Path) -> None:
    server = start(repository, tmp_path / "server.log")
    try:
        assert server.process is not None
        killed: set[int] = set()
        deadline = time.monotonic() + 60
        while server.process.poll() is None and time.monotonic() < deadline:
            for pid in set(workers_of(server)) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)
        assert server.process.wait(30) == 1, server.log_tail()
        assert "worker processes keep dying" in server.log_text()
    finally:
        stop_all([server])


@pytest.mark.parametrize(("argument", "environment", "message"), [
    (["--workers", "-1"], {}, "--workers must be from 0"),
    (["--workers", "65"], {}, "--workers must be from 0"),
    (["--workers", "two"], {}, "invalid int value: 'two'"),
    ([], {"TRITONED_WORKERS": "two"}, "TRITONED_WORKERS='two' is not a valid int"),
])
def test_a_bad_worker_count_is_a_usage_error(argument: list[str], environment: dict[str, str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", *argument, "--", "tritonserver"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, **environment}, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
