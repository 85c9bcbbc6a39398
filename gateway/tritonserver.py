"""tritonserver as the gateway's child: the one place that defines its command line (serve_local.sh and the
image both come through here), its start on internal 127.0.0.1 ports, and its end."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import lockdown
from .sized_repository import sized  # noqa: F401  (the gateway's hook: the sized copy of the repository)
from .sizing import SizingError  # noqa: F401  (a bad TRITONED_CPUS or tritoned.json: exit 2 with its message)

log = logging.getLogger("tritoned.tritonserver")

# Every tritonserver this project starts runs with these (plus the lock-down and the internal ports).
SERVER_OPTIONS = (
    "--disable-auto-complete-config",  # the repository's config.pbtxt files are the whole truth
    "--strict-readiness=true",
    "--exit-on-error=true",  # a model that fails to load stops the server at start
    # Explicit model control lets the supervisor (and no client: the front refuses load/unload) reload a model
    # whose backend process died; every model of the repository is loaded at start.
    "--model-control-mode=explicit",
    "--load-model=*",
)
# Defaults a user may add to (--metrics-config is repeatable): latency quantiles per model on the metrics port
# (nv_inference_*_summary_us), the p50/p99 of the Grafana dashboard (deploy/grafana/); Triton's latency
# histograms cover only the first response.
METRICS_OPTIONS = ("--metrics-config=summary_latencies=true",)
# Without an NVIDIA GPU these only produce warnings (NVML, pinned memory): leave them out on CPU.
CPU_OPTIONS = ("--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0")
# Options the gateway owns: given by a user they would cut the gateway off from Triton or open it up.
OWNED_OPTIONS = (
    "--http-port", "--grpc-port", "--metrics-port", "--http-address", "--grpc-address", "--metrics-address",
    "--allow-http", "--allow-grpc", "--model-control-mode", "--load-model",
    "--http-restricted-api", "--grpc-restricted-protocol",
)
PR_SET_PDEATHSIG = 1


class ForbiddenOption(ValueError):
    """A tritonserver argument that the gateway owns."""


@dataclass(frozen=True)
class InternalPorts:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def pick(cls) -> "InternalPorts":
        sockets = [socket.socket() for _ in range(3)]
        try:
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()

    def args(self) -> list[str]:
        return [f"--http-address=127.0.0.1", f"--http-port={self.http}",
                f"--grpc-address=127.0.0.1", f"--grpc-port={self.grpc}",
                f"--metrics-address=127.0.0.1", f"--metrics-port={self.metrics}"]


def has_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()


def check_user_args(args: list[str]) -> None:
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in OWNED_OPTIONS:
            raise ForbiddenOption(
                f"tritonserver option {name} is set by the gateway (public ports: the gateway's --host/--http-port/"
                f"--grpc-port/--metrics-port, TRITONED_HTTP_PORT, ...; model control and the lock-down are fixed)")


def command(tritonserver: list[str], ports: InternalPorts, admin_key: str, exit_timeout_s: int,
            gpu: bool | None = None) -> list[str]:
    """The full tritonserver command line: executable, our options, then the caller's arguments (which come last,
    so that e.g. --log-verbose=1 or another --exit-timeout-secs win; owned options are refused)."""
    executable, *args = tritonserver
    check_user_args(args)
    gpu = has_gpu() if gpu is None else gpu
    return [executable, *SERVER_OPTIONS, *METRICS_OPTIONS, f"--exit-timeout-secs={exit_timeout_s}", *ports.args(),
            *lockdown.tritonserver_args(admin_key), *(() if gpu else CPU_OPTIONS), *args]


def _die_with_parent() -> None:  # runs in the child between fork and exec: no threads exist yet in the parent
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def child_environment(environ: dict[str, str]) -> dict[str, str]:
    """Our environment without the admin key (models run arbitrary code) and without the gateway's own directory on
    PYTHONPATH (the scripts put it there for `python -m gateway`; the models' Python must not see it)."""
    env = {key: value for key, value in environ.items() if key != lockdown.ADMIN_KEY_ENV}
    ours = str(Path(__file__).resolve().parent.parent)
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and str(Path(p).resolve()) != ours]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return env


class TritonProcess:
    """The running tritonserver. Its exit status is collected by the gateway (Gateway._reap: it may be PID 1 in a
    container and reaps every child, the orphaned backend stubs of a dead server included)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.pid = 0
        self.returncode: int | None = None

    def start(self) -> None:
        process = subprocess.Popen(self.argv, env=child_environment(dict(os.environ)), preexec_fn=_die_with_parent)
        process.returncode = 0  # reaped by the gateway, never by Popen (keeps Popen's __del__ quiet)
        self.pid = process.pid
        log.info("tritonserver started (pid %d)", self.pid)

    def signal(self, signum: int) -> None:
        if self.pid and self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def describe_exit(self) -> str:
        code = self.returncode
        if code is None:
            return "running"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with status {code}"
