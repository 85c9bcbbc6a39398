"""The project's real serving path on this machine, for the tests and the load tools (bench.py, soak.py): a
converted model is assembled with make_triton_image.sh --no-build (assemble) and served by serve_local.sh (the
real tritonserver 2.51 and its Python backend stubs) on free ports (LocalServer); the server's memory is read
from /proc, its per-model statistics from /v2/models/stats."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # imported by a script run as `python bench/x.py`
    sys.path.insert(0, str(ROOT))

from gateway.tritonserver import InternalPorts  # noqa: E402
READY_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30
PORT_TAKEN = ("already in use", "Address in use", "Failed to bind", "address already")

LOGGER = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """The repository could not be assembled or the server did not come up; the message carries the log."""


def assemble(model_dir: Path, build_dir: Path, name: str = "ensemble_model", options: Sequence[str] = (),
             python: str = sys.executable) -> Path:
    """Assemble the ensemble for model_dir (utils/convert_to_onnx.py's output: model.onnx, tokenizer/,
    id2label.json) into build_dir/<name>/context/model_repository and return that directory.
    `options` go to make_triton_image.sh before its arguments (e.g. ["--batch-delay-us", "500"]); `python` is
    the interpreter it uses (TRITONED_PYTHON)."""
    command = [str(ROOT / "make_triton_image.sh"), "--no-build", *options, str(model_dir / "model.onnx"),
               str(model_dir / "tokenizer"), str(model_dir / "id2label.json"), name]
    env = {**os.environ, "TRITONED_BUILD_DIR": str(build_dir), "TRITONED_PYTHON": python}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise ServerError(f"make_triton_image.sh --no-build {' '.join(options)} failed ({result.returncode}):\n"
                          f"{result.stderr[-4000:]}")
    return build_dir / name / "context" / "model_repository"


def max_sequence_length(repository: Path) -> int:
    """The max_sequence_length the assembled text_preprocessing model truncates to."""
    config = (repository / "text_preprocessing" / "config.pbtxt").read_text(encoding="utf-8")
    match = re.search(r'max_sequence_length".*?string_value: "(\d+)"', config, re.S)
    if match is None:
        raise ValueError(f"no max_sequence_length in {repository}/text_preprocessing/config.pbtxt")
    return int(match.group(1))


def free_ports(count: int = 3) -> list[int]:
    """`count` free 127.0.0.1 ports, picked as the gateway picks tritonserver's internal ports (InternalPorts.pick,
    three at a time: the one home of the bind-to-port-0 trick)."""
    ports: list[int] = []
    while len(ports) < count:
        ports.extend(astuple(InternalPorts.pick()))
    return ports[:count]


def pin_command(cpus: Sequence[int]) -> list[str]:
    """The command prefix that runs a program, and every process it starts, on `cpus` only (taskset -c)."""
    allowed = os.sched_getaffinity(0)
    if not cpus or not set(cpus) <= allowed:
        raise ServerError(f"cannot confine the server to CPUs {sorted(cpus)}: this process may use "
                          f"{sorted(allowed)} only")
    if shutil.which("taskset") is None:
        raise ServerError("taskset (util-linux) is missing: install it to confine the server to given cores")
    return ["taskset", "-c", ",".join(str(cpu) for cpu in sorted(cpus))]


def http_ready(http_url: str) -> bool:
    """Whether the server at host:port answers 200 on /v2/health/ready."""
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command, which is in parentheses and may itself hold spaces or parentheses.
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below pid (not pid itself), from /proc."""
    children = _children()
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def process_rss(pid: int) -> tuple[str, int] | None:
    """(command name, resident set size in bytes) of pid from /proc/PID/status; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    name = re.search(r"^Name:\s*(.*)$", status, re.M)
    rss = re.search(r"^VmRSS:\s*(\d+)\s*kB", status, re.M)
    return (name.group(1) if name else "?", int(rss.group(1)) * 1024 if rss else 0)


@dataclass
class LocalServer:
    """./serve_local.sh on free 127.0.0.1 ports, in its own process group, its output in `log`: the one helper
    that starts the local Triton for the tests (tests/local_triton.py names it LocalTriton) and for the load
    tools (bench.py, soak.py).

    repository  an assembled repository directory, or a MODEL_NAME that serve_local.sh finds under its build/
    log         file that receives serve_local.sh's and tritonserver's output
    build_dir   TRITONED_BUILD_DIR for serve_local.sh (it writes build_dir/triton_backends; a MODEL_NAME is looked
                up there); None: inherited from the environment (serve_local.sh's default: <checkout>/build)
    python      TRITONED_PYTHON, the interpreter of serve_local.sh and the backend stubs
    env         more environment, applied last (it wins over build_dir and python)
    extra_args  more serve_local.sh arguments, placed after the ports (serve_local.sh takes the last value of an
                option, so a port given here wins); tritonserver's own arguments go after "--"
    checkout    the checkout whose serve_local.sh runs (default: this one; e.g. a fresh clone in a test)
    cpus        the CPUs (as os.sched_getaffinity numbers them) the whole server may run on: serve_local.sh starts
                under `taskset -c`, and the gateway, tritonserver and every backend stub inherit the affinity;
                None: all of this process's CPUs
    """

    repository: Path | str
    log: Path
    build_dir: Path | None = None
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    checkout: Path = ROOT
    cpus: Sequence[int] | None = None
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def launch(self) -> "LocalServer":
        """Start serve_local.sh on new free ports without waiting for readiness (servers can then come up side by
        side; wait_ready() each)."""
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        command = [str(self.checkout / "serve_local.sh"), str(self.repository), "--http-port", str(self.http_port),
                   "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *self.extra_args]
        if self.cpus is not None:
            command = [*pin_command(self.cpus), *command]
        env = {**os.environ, "TRITONED_PYTHON": self.python,
               **({"TRITONED_BUILD_DIR": str(self.build_dir)} if self.build_dir is not None else {}), **self.env}
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=env, cwd=self.checkout)
        LOGGER.info("serve_local.sh started (pid %d), log %s", self.process.pid, self.log)
        return self

    def start(self, wait: bool = True, attempts: int = 3, timeout: float = READY_TIMEOUT_S) -> "LocalServer":
        """launch(), then (wait=True) wait_ready(timeout). Ports are only free when chosen: when another process
        takes one first, the server is started again on new ones, up to `attempts` times."""
        for attempt in range(attempts):
            self.launch()
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
                return self
            except ServerError as error:
                self.stop()
                if attempt + 1 == attempts or not any(sign in str(error) for sign in PORT_TAKEN):
                    raise
                LOGGER.info("a port was taken before the server bound it; starting again on new ports")
        raise AssertionError("unreachable")

    def is_ready(self) -> bool:
        return http_ready(self.http_url)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll /v2/health/ready until it answers 200; ServerError (with the log's tail) when serve_local.sh exits
        or `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"serve_local.sh exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.5)
        raise ServerError(f"Triton not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def internal_urls(self) -> tuple[str, str]:
        """(HTTP, gRPC) host:port of tritonserver itself, behind the gateway: for measuring what the front costs
        only (these ports skip every check of the front; the gateway logs them at start)."""
        match = re.search(r"tritonserver's own ports \(internal, 127\.0\.0\.1\): HTTP (\d+), gRPC (\d+)",
                          self.log_tail(10**7))
        if match is None:
            raise ServerError(f"the gateway did not log tritonserver's internal ports:\n{self.log_tail()}")
        return f"127.0.0.1:{match.group(1)}", f"127.0.0.1:{match.group(2)}"

    def stats(self) -> dict[str, dict[str, Any]]:
        """Cumulative inference statistics of every model, by name (/v2/models/stats)."""
        with urllib.request.urlopen(f"http://{self.http_url}/v2/models/stats", timeout=10) as response:
            data = json.load(response)
        return {entry["name"]: entry for entry in data.get("model_stats", [])}

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the log (for error messages)."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def log_text(self) -> str:
        """log_tail() under the name the tests use."""
        return self.log_tail()

    def server_processes(self) -> list[tuple[int, str, int]]:
        """(pid, name, RSS bytes) of tritonserver and every process below it (the Python backend stubs)."""
        if self.process is None:
            return []
        processes = []
        for pid in descendants(self.process.pid):  # below serve_local.sh (a bash script): the server's tree
            info = process_rss(pid)
            if info is not None:
                processes.append((pid, info[0], info[1]))
        return processes

    def affinities(self) -> dict[int, frozenset[int]]:
        """The CPUs each process of the server's tree (serve_local.sh or the gateway it became, and every process
        below) may run on (sched_getaffinity), by pid."""
        found = {}
        for pid in [self.process.pid, *descendants(self.process.pid)] if self.process is not None else []:
            try:
                found[pid] = frozenset(os.sched_getaffinity(pid))
            except OSError:  # gone meanwhile
                continue
        return found

    def rss_bytes(self) -> int:
        return sum(rss for _, _, rss in self.server_processes())

    def ctrl_c(self) -> bool:
        """SIGINT to the whole process group if it is running, without waiting; whether it was sent (stop(send=False)
        waits for the stop later)."""
        if not self.alive():
            return False
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    def interrupt(self, timeout: float = STOP_TIMEOUT_S, send: bool = True) -> int:
        """Ctrl-C: SIGINT to the whole process group, as a terminal sends it; returns serve_local.sh's exit
        status (subprocess.TimeoutExpired when it takes longer than `timeout`). Whatever is left is killed.
        send=False: the Ctrl-C was sent already (stop_all), only wait (a second one means "stop now")."""
        assert self.process is not None, "not started"
        if send:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._kill_leftovers()

    def stop(self, send: bool = True) -> int | None:
        """interrupt(send=send) if it is running (SIGKILL after STOP_TIMEOUT_S); the exit status, None if never
        started."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                return self.interrupt(send=send)
            except subprocess.TimeoutExpired:
                LOGGER.warning("serve_local.sh did not stop in %ds: killed it", STOP_TIMEOUT_S)
        self._kill_leftovers()
        return self.process.poll()

    def _kill_leftovers(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "LocalServer":
        return self.start() if self.process is None else self

    def __exit__(self, *_: object) -> None:
        self.stop()


def stop_all(servers: Sequence[LocalServer]) -> None:
    """Stop several servers side by side: Ctrl-C to every one first, then wait for each (each stop drains and
    unloads for a few seconds; one after another they would add up). One Ctrl-C each: a second one, sent while
    the first is handled, would kill tritonserver instead of stopping it."""
    interrupted = {id(server) for server in servers if server.ctrl_c()}
    for server in servers:
        server.stop(send=id(server) not in interrupted)


def stats_delta(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per model between two LocalServer.stats() snapshots: requests, executions (batches), and per-request
    milliseconds in the queue, in compute (input, infer, output)."""
    def counter(entry: dict[str, Any], *path: str) -> float:
        value: Any = entry
        for key in path:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        return float(value) if isinstance(value, (int, float, str)) and str(value).isdigit() else 0.0

    delta: dict[str, dict[str, float]] = {}
    for name, entry in after.items():
        old = before.get(name, {})
        stats, old_stats = entry.get("inference_stats", {}), old.get("inference_stats", {})
        requests = counter(stats, "success", "count") - counter(old_stats, "success", "count")
        executions = float(entry.get("execution_count", 0)) - float(old.get("execution_count", 0))
        inferences = float(entry.get("inference_count", 0)) - float(old.get("inference_count", 0))
        row = {"requests": requests, "executions": executions,
               "batch": inferences / executions if executions else 0.0}
        for part in ("queue", "compute_input", "compute_infer", "compute_output"):
            ns = counter(stats, part, "ns") - counter(old_stats, part, "ns")
            row[part] = ns / requests / 1e6 if requests else 0.0
        delta[name] = row
    return delta
