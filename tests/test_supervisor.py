"""Dead backend processes, truthful health and drain, on the real local server (serve_local.sh: tritonserver 2.51
behind the gateway).

Each model's backend stub is killed in turn (kill -9) while a bounded load runs: the supervisor must notice within
10 s, reload that model in place, and the load must see correct answers again, with the requests that failed
counted (the front holds requests during a recovery and sends a request that a dead stub failed once more).
SIGTERM with 16 requests in flight: readiness turns 503 at once, every request sent before it is answered, exit 0.
The figures are printed (pytest -s) and the README quotes them."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import make_image
from local_triton import LocalTriton
from traffic import TEXTS, Load, gateway_events, infer, ready, stubs_of_group

MODEL = "ensemble_model"
DETECTION_LIMIT_S = 10
RECOVERY_LIMIT_S = 60
READINESS_TURN_S = 0.5  # SIGTERM to the main process -> 503 from the workers that answer readiness


def stubs(server: LocalTriton) -> dict[str, int]:
    return stubs_of_group(server.process.pid)


def log_events(server: LocalTriton, after: float) -> list[tuple[float, str]]:
    return gateway_events(server.log.read_text(errors="replace"), after)


def wait_for(condition, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()


@pytest.fixture(scope="module")
def servers(tiny_artifacts, serve, tmp_path_factory) -> Callable[[], LocalTriton]:
    """The module's server; a fresh one once the last has exited, as a restart policy would start one."""
    build_dir = tmp_path_factory.mktemp("build-supervisor")
    # Two model_onnx instances (kept at every start: explicit sizes win over sizing at start), so that one of
    # several instances of a model is killed.
    assert make_image(tiny_artifacts("bert"), build_dir, "--no-build", "--model-instances", "2",
                      "--ort-threads", "1").returncode == 0
    started: list[LocalTriton] = []

    def current() -> LocalTriton:
        if not started or started[-1].process.poll() is not None:
            started.append(serve(build_dir / MODEL / "context" / "model_repository",
                                 build_dir / f"server-{len(started)}.log", build_dir))
        return started[-1]

    return current


@pytest.fixture
def server(servers: Callable[[], LocalTriton]) -> LocalTriton:
    return servers()


@pytest.fixture(scope="module")
def expected(servers: Callable[[], LocalTriton]) -> dict[str, str]:
    return {text: infer(servers().http_url, text) for text in TEXTS}


def wait_for_recovery(server: LocalTriton, killed: float) -> list[float]:
    """Times of the gateway's "recovered in" lines after `killed`; [] when none came in time or the server ended."""
    def recoveries() -> list[float]:
        return [t for t, m in log_events(server, killed) if m.startswith("recovered in")]

    wait_for(lambda: recoveries() or server.process.poll() is not None, RECOVERY_LIMIT_S + 5, 0.1)
    return recoveries()


def xfail_if_triton_aborted(server: LocalTriton) -> None:
    """Triton 2.51's Python backend sometimes aborts the whole server when a stub is killed while it holds a
    shared-memory lock (terminate on boost::interprocess::lock_exception), an upstream defect no front can catch.
    Then the documented fallback must hold: the gateway exits at once with tritonserver's status (non-zero) and
    says so, so that a restart policy starts a fresh server (as `servers` does for the next test)."""
    if server.process.poll() is None:
        return
    log = server.log.read_text(errors="replace")
    assert TRITON_ABORT in log, f"the server ended, not by the known Triton 2.51 abort:\n{log}"
    assert server.process.returncode != 0 and "tritonserver killed by signal SIGABRT: exiting with status" in log, log
    pytest.xfail(f"Triton 2.51 aborted when the stub died ({TRITON_ABORT}, upstream); the gateway exited "
                 f"{server.process.returncode} as documented")


INSTANCES = ["text_preprocessing_0_0", "model_onnx_0_0", "model_onnx_0_1", "post_processing_0_0"]
TRITON_ABORT = "boost::interprocess::lock_exception"


@pytest.mark.parametrize("instance", INSTANCES)
def test_killed_stub_is_detected_and_its_model_reloaded_under_load(server: LocalTriton, expected: dict[str, str],
                                                                   instance: str) -> None:
    before = stubs(server)
    assert sorted(before) == sorted(INSTANCES), before
    with Load(server.http_url, expected) as load:
        time.sleep(1.0)
        killed = time.time()
        os.kill(before[instance], signal.SIGKILL)
        recovered = wait_for_recovery(server, killed)
        time.sleep(1.0)  # correct answers go on after the recovery
    xfail_if_triton_aborted(server)
    assert recovered, server.log_text()
    events = log_events(server, killed)
    detected = next(t for t, m in events if "backend process(es) died" in m and instance in m)
    failed = load.failures(killed)
    after = [r for r in load.results if r[0] > recovered[0]]
    detection, recovery = detected - killed, recovered[0] - killed
    print(f"\n{instance}: detected in {detection:.2f}s, correct answers again {recovery:.2f}s after the kill, "
          f"{len(failed)} failed of {sum(1 for r in load.results if r[1] >= killed)} requests during the event "
          f"({load.workers} clients)")
    assert detection <= DETECTION_LIMIT_S
    assert recovery <= RECOVERY_LIMIT_S
    assert after and all(outcome == "ok" for _, _, outcome in after), after[:5]
    assert not failed, failed[:5]
    now = stubs(server)
    assert sorted(now) == sorted(INSTANCES) and now[instance] != before[instance], (before, now)
    untouched = [i for i in INSTANCES if i.rsplit("_", 2)[0] != instance.rsplit("_", 2)[0]]
    assert all(now[i] == before[i] for i in untouched), "a model whose processes lived was reloaded too"
    assert ready(server.http_url) == 200


def test_readiness_is_false_while_recovering(server: LocalTriton, expected: dict[str, str]) -> None:
    """Readiness (HTTP and gRPC) turns false when a stub dies, before the model is back."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    seen: list[tuple[int, bool]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append((ready(server.http_url), client.is_server_ready()))
            except Exception:  # noqa: BLE001 - a refused call is not "ready"
                seen.append((0, False))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        killed = time.time()
        os.kill(stubs(server)["post_processing_0_0"], signal.SIGKILL)
        recovered = wait_for_recovery(server, killed)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    xfail_if_triton_aborted(server)
    assert recovered, server.log_text()
    assert seen[0] == (200, True) and seen[-1] == (200, True), seen[:3] + seen[-3:]
    assert (503, False) in seen, f"readiness never turned false: {sorted(set(seen))}"
    assert infer(server.http_url, TEXTS[0]) == expected[TEXTS[0]]


def test_local_healthcheck_command(server: LocalTriton) -> None:
    """python -m gateway.healthcheck: 0 when the probe text comes back with a label, 1 when it cannot."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "gateway.healthcheck", "--url", server.http_url]
    ok = subprocess.run([*command, "--model", MODEL], capture_output=True, text=True, cwd=root, timeout=30)
    assert ok.returncode == 0 and "healthy" in ok.stdout, ok
    for extra in (["--model", "post_processing"], ["--model", "no_such_model"]):  # not text in / not there
        bad = subprocess.run([*command, *extra], capture_output=True, text=True, cwd=root, timeout=30)
        assert bad.returncode == 1 and "unhealthy" in bad.stderr, (extra, bad)
    # Without --model: the ensemble that the repository's manifest tritoned.json names.
    found = subprocess.run([*command, "--repository", str(Path(server.repository))], capture_output=True, text=True,
                           cwd=root, timeout=30)
    assert found.returncode == 0 and f"healthy: {MODEL} answered" in found.stdout, found
    missing = subprocess.run([*command, "--repository", str(Path(server.repository) / "model_onnx")],
                             capture_output=True, text=True, cwd=root, timeout=30)
    assert missing.returncode == 2 and "tritoned.json" in missing.stderr, missing
    assert "make_triton_image.sh" in missing.stderr and "Traceback" not in missing.stderr, missing


def test_sigterm_drains_16_requests_in_flight(server: LocalTriton, expected: dict[str, str]) -> None:
    """Last (stops the server). SIGTERM to the gateway only, as `docker stop` sends it to PID 1."""
    with Load(server.http_url, expected, workers=16) as load:
        time.sleep(1.5)
        signalled = time.time()
        os.kill(server.process.pid, signal.SIGTERM)
        # The main process takes the signal; the workers that answer readiness learn it over their control pipe,
        # milliseconds later (more under this load on 2 CPUs): readiness must turn within READINESS_TURN_S.
        readiness = ready(server.http_url)
        while readiness == 200 and time.time() - signalled < READINESS_TURN_S:
            time.sleep(0.01)
            readiness = ready(server.http_url)
        turned = time.time() - signalled
        status = server.process.wait(timeout=40)
        exited = time.time()
    in_flight = [r for r in load.results if r[0] < signalled < r[1]]
    before = [r for r in load.results if r[0] < signalled]
    bad = [r for r in before if r[2] != "ok"]
    print(f"\ndrain: {len(in_flight)} requests in flight at SIGTERM, {len(before)} sent before it, {len(bad)} of "
          f"them failed; readiness {readiness} {turned * 1000:.0f} ms after SIGTERM; exit status {status} after "
          f"{exited - signalled:.2f}s")
    assert readiness in (0, 503)
    assert not bad, bad[:5]
    assert len(in_flight) >= 8, "the load did not keep requests in flight"
    assert status == 0, server.log_text()
    assert exited - signalled < 30
    assert "drained in" in server.log_text()
