"""The Helm chart's pod spec, run for real. No Kubernetes runs here, but the container can: the image is built
(make_triton_image.sh --standin, offline from a wheelhouse), the chart rendered for it (an admin key given as a
value, so from the chart's Secret, and a server option), and the Deployment's pod spec turned into `docker run`
options by tests/helm_chart.py: user and groups, read-only root filesystem, capabilities, no privilege
escalation, seccomp, every emptyDir as a tmpfs of its size limit, environment, memory and CPU, grace period.
Then: it becomes ready by the chart's probe, answers the README's curl right, passes the chart's liveness probe,
and stops the way Kubernetes stops a pod (preStop, then SIGTERM) within the grace period.

Needs a Docker engine (started with docker/engine.sh when none answers); where none can run, skipped."""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bench.local_server import free_ports, max_sequence_length
from conftest import IMAGE_MODEL_NAME, Artifacts, http
from docker_helpers import docker, readme_curl
from helm_chart import docker_run_command, port_by_name, quantity, render, server_container, the
from reference import labels_of, pytorch_probabilities

MODEL_NAME = IMAGE_MODEL_NAME
ADMIN_HEADER = "tritoned-admin-key"
READY_LIMIT_S = 300  # the chart allows more (startupProbe); a tiny model loads in seconds


@pytest.fixture(scope="module")
def image(classifier_image: tuple[str, Artifacts, Path]) -> tuple[str, Artifacts, Path]:
    """(image, artifacts, assembled repository): the tiny classifier through make_triton_image.sh --standin
    (conftest's classifier_image, the one build tests/test_container.py runs too)."""
    return classifier_image


@pytest.fixture(scope="module")
def manifest(image) -> list[dict]:
    repository, tag = image[0].split(":")
    return render({"modelName": MODEL_NAME, "image": {"repository": repository, "tag": tag},
                   "adminKey": {"value": uuid.uuid4().hex}, "server": {"extraArgs": ["--log-verbose=1"]}})


@pytest.fixture(scope="module")
def pod_spec(manifest: list[dict]) -> dict:
    return the(manifest, "Deployment")["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container_spec(pod_spec: dict) -> dict:
    return server_container(pod_spec)


class Pod:
    """The running container and where its named ports are on 127.0.0.1."""

    def __init__(self, name: str, command: list[str], host_ports: dict[str, int]) -> None:
        self.name, self.command, self.host_ports = name, command, host_ports

    def address(self, port_name: str) -> str:
        return f"127.0.0.1:{self.host_ports[port_name]}"

    def address_of(self, container_port: int, spec: dict) -> str:
        name = next(n for n, number in port_by_name(spec).items() if number == container_port)
        return self.address(name)

    def state(self) -> dict:
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        result = docker("logs", "--tail", "60", self.name, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def exec(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return docker("exec", self.name, *command, check=False, timeout=timeout)


def probe_passes(pod: Pod, probe: dict, spec: dict) -> tuple[bool, str]:
    """Run a Kubernetes probe (httpGet or exec) against the container, within its timeoutSeconds."""
    timeout = probe.get("timeoutSeconds", 1)
    if "exec" in probe:
        try:
            result = pod.exec(*probe["exec"]["command"], timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"exec timed out after {timeout}s"
        return result.returncode == 0, result.stdout + result.stderr
    get = probe["httpGet"]
    url = f"http://{pod.address_of(get['port'], spec)}{get['path']}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 400, str(response.status)
    except (OSError, urllib.error.HTTPError) as error:
        return False, str(error)


@pytest.fixture(scope="module")
def pod(image, manifest: list[dict], container_spec: dict) -> Iterator[Pod]:
    names = list(port_by_name(container_spec))
    host_ports = dict(zip(names, free_ports(len(names))))
    name = f"tritoned-helmpod-{uuid.uuid4().hex[:10]}"
    command = docker_run_command(manifest, name, host_ports)
    print("docker run options derived from the chart:", " ".join(command))
    subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    running = Pod(name, command, host_ports)
    startup = container_spec["startupProbe"]
    deadline = time.monotonic() + min(READY_LIMIT_S, startup["periodSeconds"] * startup["failureThreshold"])
    try:
        while not probe_passes(running, startup, container_spec)[0]:
            assert running.state()["Running"], f"the pod's container exited: {running.state()}\n{running.logs()}"
            assert time.monotonic() < deadline, f"not ready by the startup probe:\n{running.logs()}"
            time.sleep(1)
        yield running
    finally:
        docker("rm", "-f", name, check=False)


def test_derived_options_are_the_charts(pod: Pod, pod_spec: dict, container_spec: dict) -> None:
    command = pod.command
    context = container_spec["securityContext"]
    assert f"{context['runAsUser']}:{context['runAsGroup']}" in command
    for option in ("--read-only", "no-new-privileges"):
        assert option in command
    mounts = [word.split(":")[0] for word in command if word.startswith("/") and ":size=" in word]
    assert sorted(mounts) == sorted(m["mountPath"] for m in container_spec["volumeMounts"]) == ["/dev/shm", "/tmp"]
    assert command[-len(container_spec["args"]):] == container_spec["args"]
    assert any(word.startswith("TRITONED_ADMIN_KEY=") for word in command)


def process_status(pod: Pod) -> dict[str, dict[str, str]]:
    """/proc/<pid>/status fields of every process in the container, by "pid name"."""
    script = ("for f in /proc/[0-9]*/status; do echo \"== $f\"; cat \"$f\" 2>/dev/null; done")
    found: dict[str, dict[str, str]] = {}
    for block in pod.exec("sh", "-c", script).stdout.split("== ")[1:]:
        fields = dict(re.findall(r"^(\w+):\s+(.*)$", block, re.M))
        if "Pid" in fields:
            found[f"{fields['Pid']} {fields['Name']}"] = fields
    return found


def test_pod_runs_under_the_charts_security_settings(pod: Pod, pod_spec: dict, container_spec: dict) -> None:
    """Every process (the server, its backend processes; the `sh` that reads them is a docker exec, under the same
    settings) runs as the chart says, read from the kernel."""
    context = {**pod_spec["securityContext"], **container_spec["securityContext"]}
    processes = process_status(pod)
    assert any("triton" in name for name in processes) and len(processes) >= 4, sorted(processes)
    for name, status in processes.items():
        assert set(status["Uid"].split()) == {str(context["runAsUser"])}, (name, status["Uid"])
        assert set(status["Gid"].split()) == {str(context["runAsGroup"])}, (name, status["Gid"])
        assert str(pod_spec["securityContext"]["fsGroup"]) in status["Groups"].split(), name
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, (name, "capabilities left")
        assert status["NoNewPrivs"] == "1", name
        assert status["Seccomp"] == "2", (name, "no seccomp filter (RuntimeDefault)")
    write = pod.exec("sh", "-c", "echo x > /opt/tritoned/probe || echo x > /probe")
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write
    host = json.loads(docker("inspect", "-f", "{{json .HostConfig}}", pod.name).stdout)
    limits = container_spec["resources"]["limits"]
    assert host["ReadonlyRootfs"] and host["Memory"] == int(quantity(limits["memory"]))
    assert host["NanoCpus"] == int(quantity(limits["cpu"]) * 1e9)
    # The CPU limit alone sizes the server (gateway/sizing.py reads the quota it becomes).
    cpus = max(1, int(quantity(limits["cpu"]) + 0.25))
    full = docker("logs", pod.name, check=False)
    log = full.stdout + full.stderr
    assert f"sized for {cpus} CPU(s)" in log and f"x {cpus} ONNX Runtime thread(s)" in log, log[-3000:]


def test_writable_paths_are_the_charts_emptydirs(pod: Pod, pod_spec: dict, container_spec: dict) -> None:
    """Each emptyDir is mounted at its size limit, and /dev/shm is where the Python backend's shared memory
    really lives (docker's --shm-size, the chart's memory-backed emptyDir)."""
    volumes = {v["name"]: v["emptyDir"] for v in pod_spec["volumes"]}
    for mount in container_spec["volumeMounts"]:
        size = pod.exec("df", "-B1", "--output=size", mount["mountPath"]).stdout.split()[-1]
        assert int(size) == int(quantity(volumes[mount["name"]]["sizeLimit"])), mount
    shm = next(m for m in container_spec["volumeMounts"] if volumes[m["name"]].get("medium") == "Memory")
    regions = pod.exec("ls", shm["mountPath"]).stdout.split()
    assert any("triton_python_backend_shm_region" in region for region in regions), regions


def test_readme_curl_answers_right_through_the_http_port(pod: Pod, image, container_spec: dict) -> None:
    _, artifacts, repository = image
    command = readme_curl()
    assert "localhost:8000" in command and container_spec["ports"][0]["containerPort"] == 8000, command
    command = command.replace("localhost:8000", pod.address("http"))
    output = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    outputs = {o["name"]: o["data"] for o in json.loads(output.stdout)["outputs"]}
    text = json.loads(re.search(r"-d '(.*)'", command).group(1))["inputs"][0]["data"][0]
    want = pytorch_probabilities(artifacts.hf_dir, [text], max_sequence_length(repository))
    assert outputs["label"] == labels_of(want, artifacts.labels())
    np.testing.assert_allclose(outputs["probabilities"], want[0], atol=1e-4)


def test_grpc_and_metrics_answer_on_the_ports_named_so(pod: Pod) -> None:
    """Named ports are what the Service, the ServiceMonitor and the scrape annotations use; the counters the
    chart's queue-time autoscaling divides are exported for the model."""
    client = grpcclient.InferenceServerClient(pod.address("grpc"))
    assert client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    status, text = http(pod.address("metrics"), "GET", "/metrics")
    assert status == 200, text[:500]
    for counter in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert re.search(rf'^{counter}{{[^}}]*model="{MODEL_NAME}"', text, re.M), f"{counter} not exported"


def test_readiness_and_liveness_probes_pass(pod: Pod, container_spec: dict) -> None:
    for probe in ("readinessProbe", "livenessProbe"):
        passed, detail = probe_passes(pod, container_spec[probe], container_spec)
        assert passed, f"{probe} fails: {detail}\n{pod.logs()}"


def test_admin_key_from_the_secret_and_the_charts_arguments_reach_the_server(pod: Pod, manifest) -> None:
    key = next(word.split("=", 1)[1] for word in pod.command if word.startswith("TRITONED_ADMIN_KEY="))
    assert http(pod.address("http"), "GET", "/v2/logging")[0] == 403
    status, text = http(pod.address("http"), "GET", "/v2/logging", headers={ADMIN_HEADER: key})
    assert status == 200, (status, text)
    assert json.loads(text)["log_verbose_level"] == 1, f"server.extraArgs did not reach tritonserver: {text}"


def test_memory_stays_under_the_limit(pod: Pod, container_spec: dict) -> None:
    usage = docker("stats", "--no-stream", "--format", "{{json .}}", pod.name).stdout
    used = json.loads(usage)["MemUsage"].split("/")[0].strip()
    used_bytes = quantity(used.replace("iB", "i").replace("B", ""))
    limit = quantity(container_spec["resources"]["limits"]["memory"])
    print(f"memory in use: {used} of {container_spec['resources']['limits']['memory']}")
    assert used_bytes < limit


def test_stops_like_a_pod_within_the_grace_period(pod: Pod, pod_spec: dict, container_spec: dict) -> None:
    """Last: Kubernetes runs preStop, then sends SIGTERM, and SIGKILLs at terminationGracePeriodSeconds
    counted from the start. Exit code 0 means the server handled SIGTERM itself."""
    grace = pod_spec["terminationGracePeriodSeconds"]
    started = time.monotonic()
    pre_stop = pod.exec(*container_spec["lifecycle"]["preStop"]["exec"]["command"], timeout=grace)
    assert pre_stop.returncode == 0, f"preStop failed in the image: {pre_stop.stderr}"
    left = grace - (time.monotonic() - started)
    docker("stop", "-t", str(int(left)), pod.name, timeout=grace + 30)
    elapsed = time.monotonic() - started
    state = pod.state()
    assert state["ExitCode"] == 0 and not state["OOMKilled"], f"{state}\n{pod.logs()}"
    assert elapsed < grace, f"preStop + shutdown took {elapsed:.1f}s of a {grace}s grace period"
    print(f"preStop + shutdown: {elapsed:.1f}s of {grace}s")
