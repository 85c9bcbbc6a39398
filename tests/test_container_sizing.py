"""The image sizes itself from the CPUs docker run gives it: started with --cpus 1 and --cpus 2 (and with
-e TRITONED_CPUS over --cpus), its start log says what it found and chose, and the config it serves
(GET /v2/models/model_onnx/config through the gateway) has those sizes; a bad TRITONED_CPUS stops it at start
with the fix. The image is the stand-in build of tests/test_container.py (same fixtures)."""
from __future__ import annotations

import json
import subprocess
import uuid
from typing import Iterator

import pytest

from conftest import http
from docker_helpers import Container, docker
from local_triton import free_ports
from test_container import built, engine, secrets, standin, wheelhouse  # noqa: F401  (fixtures)

CASES = {  # name: (docker run options, CPUs the server must size for)
    "cpus1": (["--cpus", "1"], 1),
    "cpus2": (["--cpus", "2"], 2),
    "cpus1_env3": (["--cpus", "1", "-e", "TRITONED_CPUS=3"], 3),
}
# Threads per model_onnx instance while the other is busy (2 instances): 0 where 2 x the threads fit the CPUs.
BUSY_THREADS = {1: 0, 2: 1, 3: 1}


@pytest.fixture(scope="module")
def containers(built) -> Iterator[dict[str, Container]]:  # noqa: F811
    """One container per case, started side by side."""
    image = built[0]
    running: dict[str, Container] = {}
    try:
        for case, (options, _) in CASES.items():
            ports = dict(zip((8000, 8001, 8002), free_ports(3)))
            name = f"tritoned-test-sizing-{case.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
            command = ["docker", "run", "-d", "--name", name, "--shm-size=256m", *options,
                       *[arg for port, host in ports.items() for arg in ("-p", f"127.0.0.1:{host}:{port}")], image]
            running[case] = Container(command=command, name=name, host_ports=ports).start()
        for container in running.values():
            container.wait_ready()
        yield running
    finally:
        for container in running.values():
            container.remove()


@pytest.mark.parametrize("case", sorted(CASES))
def test_start_log_and_served_config_show_the_sizes(containers: dict[str, Container], case: str) -> None:
    container, (_, cpus) = containers[case], CASES[case]
    log = docker("logs", container.name, check=False)
    text = log.stdout + log.stderr
    found = 3 if case == "cpus1_env3" else cpus
    if case == "cpus1_env3":
        assert "TRITONED_CPUS=3 overrides it" in text, text[-4000:]
        found = 1
    assert f"CPUs found: {found} (" in text, text[-4000:]
    assert "cpu.max: " in text or "cfs quota: " in text, text[-4000:]  # the cgroup quota docker run set
    assert f"sized for {cpus} CPU(s)" in text, text[-4000:]
    assert f"model_onnx 2 instance(s) x {cpus} ONNX Runtime thread(s)" in text, text[-4000:]
    status, body = http(container.url(8000), "GET", "/v2/models/model_onnx/config")
    assert status == 200, body
    config = json.loads(body)
    assert [group["count"] for group in config["instance_group"]] == [2]
    assert config["parameters"]["intra_op_thread_count"]["string_value"] == str(cpus)
    busy = BUSY_THREADS[cpus]
    assert config["parameters"]["busy_intra_op_thread_count"]["string_value"] == str(busy)
    if busy:
        assert f"{busy} thread(s) per instance while another is busy" in text, text[-4000:]
    assert config["max_batch_size"] >= 64 and "dynamic_batching" in config
    assert all(tensor.get("allow_ragged_batch") for tensor in config["input"])
    status, _ = http(container.url(8000), "POST", "/v2/models/ensemble_model/infer",
                     {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": ["помогите"]}]})
    assert status == 200
    # The sized copy lies in the container's temporary directory; /models is left as the image has it.
    listing = container.exec("sh", "-c", "ls -la /tmp/tritoned_repository_*/model_onnx/ && ls -ld /models")
    assert "model.onnx" not in listing.stdout and "-> /models/model_onnx/1" in listing.stdout, listing.stdout
    # The instances' busy board (model_onnx/1/model.py) lies in the sized copy the server's user may write.
    assert (".busy_instances" in listing.stdout) == bool(busy), listing.stdout


@pytest.mark.parametrize("value", ["0", "two", "1.5"])
def test_a_bad_cpus_setting_stops_the_start_with_the_fix(built, value: str) -> None:  # noqa: F811
    result = subprocess.run(["docker", "run", "--rm", "-e", f"TRITONED_CPUS={value}", built[0]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"TRITONED_CPUS='{value}' is not a whole number of CPUs >= 1" in result.stderr
