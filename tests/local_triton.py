"""Start ./serve_local.sh (the real Triton server) for a test and stop it the way a user does (Ctrl-C)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the bench package: one readiness check for tests and benchmarks

from bench.local_server import free_ports, http_ready, wait_until_ready  # noqa: E402

READY_TIMEOUT_S = 120
PORT_TAKEN = ("already in use", "Address in use", "Failed to bind", "address already")


@dataclass
class LocalTriton:
    """One serve_local.sh process group on free ports; `log` collects its output."""

    repository: Path
    log: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
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

    def start(self, wait: bool = True, attempts: int = 3) -> "LocalTriton":
        """Starts on free ports; when another process takes one of them first (the ports are only free when
        chosen), starts again on new ones."""
        for attempt in range(attempts):
            try:
                return self._start(wait)
            except RuntimeError as error:
                if attempt + 1 == attempts or not any(sign in str(error) for sign in PORT_TAKEN):
                    raise
        raise AssertionError("unreachable")

    def _start(self, wait: bool) -> "LocalTriton":
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        command = [
            str(ROOT / "serve_local.sh"), str(self.repository),
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), *self.extra_args,
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **self.env},
            )
        if wait:
            self.wait_ready()
        return self

    def is_ready(self) -> bool:
        return http_ready(self.http_url)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """ServerError (a RuntimeError carrying the log) when serve_local.sh exits or timeout passes first."""
        wait_until_ready(self.process, self.http_url, timeout, self.log_text)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl-C: SIGINT to the whole process group, as a terminal sends it. Returns the exit status."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._kill_leftovers()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.interrupt()
            except subprocess.TimeoutExpired:
                pass
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
