"""The gateway's worker processes, seen from the main process. The public HTTP and gRPC ports are served by
several workers side by side (gateway/worker.py), so that no single Python process caps the server: each worker
has its own SO_REUSEPORT socket on the HTTP port (created here and kept open here, so that a worker restarted
finds its connections waiting) and binds the gRPC port itself with SO_REUSEPORT; the kernel spreads new
connections over them. The main process keeps what must be one: tritonserver, the supervisor, the metrics port,
the health state and the drain. It talks to each worker over two pipes of JSON lines:

main -> worker  {"hello": ...} once (settings, Triton's internal ports, the worker's share of the body budget),
                {"health": {"phase", "reason", "generation"}} on every change, {"catalog": ...} once the models
                are known, {"drain": seconds} after SIGTERM's drain delay
worker -> main  {"poke": true} (a request failed the way a dead backend process makes it fail: check now),
                {"drained": {"left": n}} before it exits, {"fatal": message} when it cannot serve (exits 2)

A worker that dies unexpectedly is started again at once; more than MAX_RESTARTS deaths within RESTART_WINDOW_S
make the gateway exit 1 (a restart policy takes over)."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import lockdown
from .catalog import Catalog, Model, Tensor
from .health import Health, Phase
from .settings import Limits, Settings
from .sizing import available_cpus

log = logging.getLogger("tritoned.workers")
CPUS_PER_WORKER = 4  # the front needs a small share of the CPU next to the models: one worker per 4 CPUs
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def worker_count(requested: int) -> int:
    """`requested` when positive; else one worker per CPUS_PER_WORKER CPUs, at least one."""
    if requested > 0:
        return requested
    return max(1, -(-available_cpus() // CPUS_PER_WORKER))


def budget_share(capacity: int, workers: int, small: int) -> int:
    """Each worker's share of the body budget: the whole gateway holds at most `capacity` bytes of bodies (a
    share never goes below `small`, the size that never waits anyway)."""
    return max(small, capacity // workers)


# ------------------------------------------------------------------------------------------------- the wire

def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def catalog_to_wire(catalog: Catalog) -> dict[str, Any]:
    return {name: dataclasses.asdict(model) for name, model in catalog.models.items()}


def catalog_from_wire(wire: dict[str, Any], limits: Limits) -> Catalog:
    def tensors(items: list[dict[str, Any]]) -> tuple[Tensor, ...]:
        return tuple(Tensor(t["name"], t["datatype"], tuple(t["shape"])) for t in items)
    models = {name: Model(name=m["name"], platform=m["platform"], max_batch_size=m["max_batch_size"],
                          inputs=tensors(m["inputs"]), outputs=tensors(m["outputs"]), metadata=m["metadata"])
              for name, m in wire.items()}
    return Catalog(models=models, limits=limits)


class LineReader:
    """JSON lines from a non-blocking pipe, read by the event loop; `on_message` for each, `on_eof` at the end."""

    def __init__(self, fd: int, on_message: Callable[[dict[str, Any]], None], on_eof: Callable[[], None]) -> None:
        self.fd, self.on_message, self.on_eof = fd, on_message, on_eof
        self.buffer = b""
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            self.on_eof()
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line:
                self.on_message(json.loads(line))

    def close(self) -> None:
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


def send(fd: int, message: dict[str, Any]) -> bool:
    """Write one message to a pipe (small messages: the pipe's buffer takes them whole); False once the reader
    is gone."""
    data = encode(message)
    try:
        while data:
            data = data[os.write(fd, data):]
        return True
    except OSError:  # BrokenPipeError: the worker died; the pool notices through its exit status
        return False


# ------------------------------------------------------------------------------------------------- the pool

def listen_reuseport(host: str, port: int) -> socket.socket:
    """One SO_REUSEPORT listening socket on host:port (OSError when another process holds the port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


@dataclasses.dataclass
class Worker:
    index: int
    sock: socket.socket  # its HTTP listening socket, kept here while the gateway accepts connections
    process: subprocess.Popen | None = None
    control: int = -1  # write end of main -> worker
    events: LineReader | None = None
    exit_code: int | None = None
    left: int = 0  # requests it reported cut off by the drain timeout


class WorkerPool:
    def __init__(self, settings: Settings, sockets: list[socket.socket], upstream_http: int, upstream_grpc: int,
                 health: Health, generation: Callable[[], int], on_poke: Callable[[], None]) -> None:
        self.settings = settings
        self.workers = [Worker(index, sock) for index, sock in enumerate(sockets)]
        self.upstream = {"http": upstream_http, "grpc": upstream_grpc}
        self.health = health
        self.generation = generation
        self.on_poke = on_poke
        self.catalog: dict[str, Any] | None = None
        self.draining = False
        self.deaths: list[float] = []
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.capacity = budget_share(settings.limits.max_bytes_in_flight, len(sockets),
                                     settings.limits.body_overhead_bytes)
        health.listeners.append(lambda phase, reason: self.broadcast(self._health_message()))

    def start(self) -> None:
        for worker in self.workers:
            self._spawn(worker)
        log.info("%d worker process(es) serve HTTP and gRPC (pids %s), each holding at most %.1f MiB of request "
                 "bodies", len(self.workers), ", ".join(str(w.process.pid) for w in self.workers if w.process),
                 self.capacity / (1 << 20))

    @property
    def pids(self) -> dict[int, Worker]:
        return {w.process.pid: w for w in self.workers if w.process is not None and w.exit_code is None}

    def _health_message(self) -> dict[str, Any]:
        return {"health": {"phase": self.health.phase.name, "reason": self.health.reason,
                           "generation": self.generation()}}

    def _spawn(self, worker: Worker) -> None:
        control_read, control_write = os.pipe()
        events_read, events_write = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != lockdown.ADMIN_KEY_ENV}  # workers never need the key
        env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
        argv = [sys.executable, "-m", "gateway.worker", "--index", str(worker.index), "--control", str(control_read),
                "--events", str(events_write), "--http-socket", str(worker.sock.fileno())]
        worker.process = subprocess.Popen(argv, pass_fds=(control_read, events_write, worker.sock.fileno()), env=env)
        worker.process.returncode = 0  # reaped by the gateway's reaper (exited()), never by Popen
        worker.exit_code = None
        os.close(control_read)
        os.close(events_write)
        worker.control = control_write
        worker.events = LineReader(events_read, lambda message: self._on_event(worker, message), lambda: None)
        hello = {"settings": self.settings.to_json(), "upstream": self.upstream, "capacity": self.capacity,
                 "workers": len(self.workers)}
        send(control_write, {"hello": hello})
        send(control_write, self._health_message())
        if self.catalog is not None:
            send(control_write, {"catalog": self.catalog})

    def _on_event(self, worker: Worker, message: dict[str, Any]) -> None:
        if "poke" in message:
            self.on_poke()
        elif "drained" in message:
            worker.left = int(message["drained"].get("left", 0))
        elif "fatal" in message and not self.failed.done():
            self.failed.set_result(f"worker {worker.index}: {message['fatal']}")

    def broadcast(self, message: dict[str, Any]) -> None:
        for worker in self.workers:
            if worker.exit_code is None and worker.control >= 0:
                send(worker.control, message)

    def set_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog_to_wire(catalog)
        self.broadcast({"catalog": self.catalog})

    def exited(self, pid: int, code: int) -> bool:
        """A child exited (the gateway reaps every child): True when it was one of the workers."""
        worker = self.pids.get(pid)
        if worker is None:
            return False
        worker.exit_code = code
        self._close_pipes(worker)
        if self.draining:
            return True
        how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW_S] + [now]
        if self.failed.done():
            return True
        if len(self.deaths) > MAX_RESTARTS:
            self.failed.set_result(f"worker processes keep dying: {len(self.deaths)} within {RESTART_WINDOW_S:g}s "
                                   f"(the last, worker {worker.index} (pid {pid}), {how})")
            return True
        self._spawn(worker)
        assert worker.process is not None
        log.error("worker %d (pid %d) %s: started worker %d again (pid %d); its connections were cut, the other "
                  "workers served on", worker.index, pid, how, worker.index, worker.process.pid)
        return True

    def _close_pipes(self, worker: Worker) -> None:
        if worker.events is not None:
            worker.events.close()
            worker.events = None
        if worker.control >= 0:
            os.close(worker.control)
            worker.control = -1

    async def drain(self, timeout: float) -> int:
        """Stop accepting connections, let every worker answer its requests in flight (at most `timeout` seconds)
        and exit; returns the number of requests cut off."""
        self.draining = True
        self.broadcast({"drain": timeout})
        for worker in self.workers:
            worker.sock.close()  # the workers' copies close as each stops accepting
        deadline = time.monotonic() + timeout + 5
        while self.pids and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self._reap_exited()
        for pid, worker in self.pids.items():
            log.warning("worker %d (pid %d) did not exit after the drain: killing it", worker.index, pid)
            os.kill(pid, signal.SIGKILL)
        return sum(worker.left for worker in self.workers)

    async def stop(self, timeout: float = 3.0) -> None:
        """Whatever is left (an exit that is not a drain): workers end when their control pipe closes (at most
        `timeout` seconds are waited for: tritonserver waits for their open connections when it stops)."""
        self.draining = True
        for worker in self.workers:
            self._close_pipes(worker)
            worker.sock.close()
        deadline = time.monotonic() + timeout
        while self.pids and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self._reap_exited()

    def _reap_exited(self) -> None:
        """Collect the workers that exited. The gateway's reaper does too, but it ends with tritonserver: once
        tritonserver is gone (killed by a second Ctrl-C, or dead), a drain or stop would otherwise wait its whole
        timeout for workers that exited long before."""
        for pid, worker in self.pids.items():
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                worker.exit_code = os.waitstatus_to_exitcode(status)  # its pipes close in stop()


def install_event_loop() -> None:
    """uvloop's event loop where it is installed (a faster loop for the fronts), asyncio's own otherwise."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
