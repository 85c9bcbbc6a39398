"""serve_local.sh: listens on 127.0.0.1 by default, keeps admin APIs closed, and Ctrl-C stops
everything it started (server and every Python backend stub)."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import make_image
from local_triton import LocalTriton


@pytest.fixture(scope="module")
def repository(tiny_artifacts, tmp_path_factory) -> tuple[Path, Path]:
    build_dir = tmp_path_factory.mktemp("build-serve")
    result = make_image(tiny_artifacts("bert"), build_dir, "--no-build")
    assert result.returncode == 0, result.stderr
    return build_dir / "ensemble_model" / "context" / "model_repository", build_dir


def listening_addresses(port: int) -> set[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    hosts = {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}
    return {host.removeprefix("[::ffff:").removesuffix("]") for host in hosts}  # IPv4-mapped IPv6 = IPv4


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True).stdout
    return [int(p) for p, g in (line.split() for line in out.splitlines()) if int(g) == pid]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_local_only_locked_down_and_ctrl_c_stops_everything(repository, serve, tmp_path: Path) -> None:
    repo, build_dir = repository
    server: LocalTriton = serve(repo, tmp_path / "server.log", build_dir)
    assert "Triton is ready" in server.log_text() or _wait_for_banner(server)

    for port in (server.http_port, server.grpc_port, server.metrics_port):
        assert listening_addresses(port) == {"127.0.0.1"}, port

    base = f"http://{server.http_url}/v2"
    status, body = post(f"{base}/repository/models/model_onnx/unload", {})
    assert status in (400, 403), (status, body)  # model-repository API is restricted
    status, body = post(f"{base}/logging", {"log_verbose_level": 1})
    assert status in (400, 403), (status, body)
    assert server.is_ready()

    group = server.process.pid
    assert len(descendants(group)) >= 4  # script, tritonserver, three stubs
    assert server.interrupt(timeout=30) == 0, server.log_text()
    time.sleep(0.5)
    assert descendants(group) == [], "processes left after Ctrl-C"


def _wait_for_banner(server: LocalTriton, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Triton is ready" in server.log_text():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("layout", ["empty", "hf_checkpoint", "models_without_ensemble"])
def test_a_directory_that_is_not_a_model_repository_is_refused_before_starting(layout: str, tmp_path: Path) -> None:
    """Issue 14 item 1: no server starts, the message says what was expected and how to assemble a repository."""
    import os
    import sys

    directory = tmp_path / layout
    directory.mkdir()
    if layout == "hf_checkpoint":
        (directory / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
        (directory / "model.safetensors").write_bytes(b"\0" * 16)
    elif layout == "models_without_ensemble":
        (directory / "model_onnx").mkdir()
        (directory / "model_onnx" / "config.pbtxt").write_text('name: "model_onnx"\nbackend: "python"\n')
    env = {**os.environ, "TRITONED_PYTHON": sys.executable, "TRITONED_BUILD_DIR": str(tmp_path / "build")}
    result = subprocess.run([str(Path(__file__).resolve().parent.parent / "serve_local.sh"), str(directory),
                             "--http-port", "1"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "not a model repository" in result.stderr, result.stderr
    assert "./make_triton_image.sh --no-build" in result.stderr, result.stderr
    assert ("Hugging Face checkpoint" in result.stderr) == (layout == "hf_checkpoint"), result.stderr
    assert "convert_to_onnx.py" in result.stderr or layout != "hf_checkpoint"
    assert "ready" not in result.stderr and "curl" not in result.stderr and "Starting Triton" not in result.stderr


def refusal(directory: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    import os
    import sys

    env = {**os.environ, "TRITONED_PYTHON": sys.executable, "TRITONED_BUILD_DIR": str(tmp_path / "build")}
    return subprocess.run([str(Path(__file__).resolve().parent.parent / "serve_local.sh"), str(directory),
                           "--http-port", "1"], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("manifest, phrases", [
    (None, ["no tritoned.json at its root", "./make_triton_image.sh --no-build"]),
    ("{not json", ["tritoned.json is not valid JSON", "./make_triton_image.sh"]),
    ('{"format": 1, "ensemble": 5}', ["tritoned.json", "./make_triton_image.sh"]),
    ('{"format": 99}', ["format 99", "./make_triton_image.sh"]),
])
def test_a_repository_without_a_sound_manifest_is_refused_before_starting(repository, tmp_path: Path,
                                                                          manifest: str | None,
                                                                          phrases: list[str]) -> None:
    """The manifest tritoned.json (make_triton_image.sh writes it) is what says a directory is an assembled
    repository: one assembled before it existed, or with a broken one, is refused with the fix."""
    import shutil

    copy = tmp_path / "repository"
    shutil.copytree(repository[0], copy)
    if manifest is None:
        (copy / "tritoned.json").unlink()
    else:
        (copy / "tritoned.json").write_text(manifest)
    result = refusal(copy, tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Starting Triton" not in result.stderr, result.stderr


def test_cpus_flag_sizes_the_server(repository, serve, tmp_path: Path) -> None:
    """--cpus N sizes model_onnx and the tokenizer for N CPUs (as TRITONED_CPUS=N), whatever the machine has:
    the start log says so and the served config has N ONNX Runtime threads."""
    repo, build_dir = repository
    server: LocalTriton = serve(repo, tmp_path / "server.log", build_dir, ["--cpus", "3"])
    log = server.log.read_text(errors="replace")
    assert "TRITONED_CPUS=3 overrides it" in log and "x 3 ONNX Runtime thread(s)" in log, log[-3000:]
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/model_onnx/config", timeout=10) as response:
        config = json.loads(response.read())
    assert config["parameters"]["intra_op_thread_count"]["string_value"] == "3"
    assert server.interrupt(timeout=30) == 0


@pytest.mark.parametrize("value", ["0", "two", "1.5", "-1", ""])
def test_bad_cpus_flag_is_refused_before_starting(repository, value: str) -> None:
    repo, _ = repository
    script = Path(__file__).resolve().parent.parent / "serve_local.sh"
    result = subprocess.run([str(script), "--cpus", value, str(repo)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--cpus" in result.stderr and ("whole number >= 1" in result.stderr or "needs a value" in result.stderr)


def test_a_second_ctrl_c_after_traffic_stops_everything_within_seconds(repository, serve, tmp_path: Path) -> None:
    """Ctrl-C twice ("stopping now": tritonserver is killed) after HTTP and gRPC requests: serve_local.sh is gone
    within seconds with nothing left behind (it took 21 s when the drain waited its whole timeout for a worker
    that had already exited: the gateway's reaper ends with tritonserver)."""
    import os
    import signal

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from conftest import infer_items

    repo, build_dir = repository
    server: LocalTriton = serve(repo, tmp_path / "server.log", build_dir)
    for module, client in ((httpclient, httpclient.InferenceServerClient(server.http_url)),
                           (grpcclient, grpcclient.InferenceServerClient(server.grpc_url))):
        answer = infer_items(module, client, "ensemble_model", ["hello", "a longer text"])
        assert answer.as_numpy("label").shape[0] == 2
    group = server.process.pid
    started = time.monotonic()
    os.killpg(group, signal.SIGINT)
    deadline = time.monotonic() + 5
    while "draining" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(group, signal.SIGINT)
    server.process.wait(timeout=30)
    took = time.monotonic() - started
    assert "received again: stopping now" in server.log_text(), server.log_text()
    assert took < 8, f"a second Ctrl-C took {took:.1f}s to stop the server:\n{server.log_text()}"
    while descendants(group) and time.monotonic() - started < 8:  # the backend stubs notice tritonserver is gone
        time.sleep(0.1)
    assert descendants(group) == [], "processes left 8 s after a second Ctrl-C"
