"""The gateway's life: bind the public ports, start tritonserver, serve, supervise, drain, exit.

Exit status: 0 after SIGTERM/SIGINT once every request in flight was answered; tritonserver's own status when it
ends by itself (non-zero: a crash or a model that failed to load); 1 when the supervisor cannot heal the server;
2 for a usage error (unfit admin key, a port in use, an option the gateway owns)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time

from aiohttp import web

from . import lockdown, tritonserver
from .catalog import Catalog
from .health import Health, Phase
from .http_front import metrics_app
from .settings import Settings
from .supervisor import Fatal, Supervisor
from .upstream import Upstream
from .workers import WorkerPool, install_event_loop, listen_reuseport, worker_count

log = logging.getLogger("tritoned.gateway")
EXAMPLE_TEXT = "помогите мне"


class UsageError(Exception):
    """Exit 2 with this message."""


def _listen(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({what}): {error.strerror} (already in use?)") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Gateway:
    def __init__(self, settings: Settings, admin_key: str) -> None:
        self.settings = settings
        self.admin_key = admin_key
        self.health = Health()
        self.ports = tritonserver.InternalPorts.pick()
        self.triton = tritonserver.TritonProcess(
            tritonserver.command(settings.tritonserver, self.ports, admin_key, settings.triton_exit_timeout_s))
        self.workers = worker_count(settings.workers)
        self.pool: WorkerPool | None = None
        self.stop_requested: asyncio.Event | None = None
        self.signals = 0

    def run(self) -> int:
        # The sockets are bound before tritonserver starts (a port in use is an error at once) and tritonserver
        # starts before any thread exists (its parent-death signal is set between fork and exec).
        http_sockets = self._listen_http()
        metrics_socket = _listen(self.settings.host, self.settings.metrics_port, "metrics")
        grpc_probe = _listen(self.settings.host, self.settings.grpc_port, "gRPC")
        grpc_probe.close()  # the workers bind gRPC themselves (SO_REUSEPORT) once the models' limits are known
        self.triton.start()
        # Internal: clients use the public ports. (bench/ reads this line to measure what the front costs.)
        log.info("tritonserver's own ports (internal, 127.0.0.1): HTTP %d, gRPC %d, metrics %d",
                 self.ports.http, self.ports.grpc, self.ports.metrics)
        install_event_loop()
        return asyncio.run(self._main(http_sockets, metrics_socket))

    def _listen_http(self) -> list[socket.socket]:
        """One SO_REUSEPORT socket on the HTTP port per worker (the kernel spreads connections over them)."""
        sockets: list[socket.socket] = []
        try:
            for _ in range(self.workers):
                sockets.append(listen_reuseport(self.settings.host, self.settings.http_port))
        except OSError as error:
            for sock in sockets:
                sock.close()
            raise UsageError(f"cannot listen on {self.settings.host}:{self.settings.http_port} (HTTP): "
                             f"{error.strerror} (already in use?)") from None
        return sockets

    async def _main(self, http_sockets: list[socket.socket], metrics_socket: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        upstream = Upstream(self.ports.http, self.admin_key, self.settings.limits)
        supervisor = Supervisor(self.settings.supervisor, self.triton, upstream, self.health, self._set_catalog)
        self.pool = pool = WorkerPool(self.settings, http_sockets, self.ports.http, self.ports.grpc, self.health,
                                      lambda: supervisor.generation, supervisor.poke)
        pool.start()
        metrics_runner = web.AppRunner(await metrics_app(self.ports.metrics), access_log=None, handle_signals=False,
                                       auto_decompress=False)
        await metrics_runner.setup()
        await web.SockSite(metrics_runner, metrics_socket).start()
        supervising = asyncio.ensure_future(supervisor.run())
        reaping = asyncio.ensure_future(self._reap())
        stopping = asyncio.ensure_future(self.stop_requested.wait())
        status = 0
        try:
            armed_once = False
            while True:
                done, _ = await asyncio.wait({supervising, reaping, stopping, pool.failed}, timeout=0.5,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not armed_once and self.health.ready:
                    armed_once = True
                    self._banner(supervisor.catalog)
                if stopping in done:
                    status = await self._drain(pool)
                    break
                if pool.failed in done:
                    log.error("%s. Exiting with status 1 so that the restart policy (docker run "
                              "--restart=on-failure, Kubernetes) starts a fresh server", pool.failed.result())
                    self.health.set(Phase.STOPPING, pool.failed.result())
                    status = 1
                    break
                if reaping in done:
                    status = self.triton.returncode if self.triton.returncode else 1
                    log.error("tritonserver %s: exiting with status %d", self.triton.describe_exit(), status)
                    break
                if supervising in done:
                    error = supervising.exception()
                    reason = str(error) if isinstance(error, Fatal) else repr(error)
                    log.error("cannot heal the server in place: %s. Exiting with status 1 so that the restart "
                              "policy (docker run --restart=on-failure, Kubernetes) starts a fresh one", reason)
                    self.health.set(Phase.STOPPING, reason)
                    status = 1
                    break
        finally:
            for task in (supervising, stopping):
                task.cancel()
            await asyncio.gather(supervising, stopping, return_exceptions=True)
            # Every connection to Triton is closed before it is asked to stop: it waits for open HTTP connections.
            pool.stop()  # workers still running (no drain: a failure) end as their control pipe closes
            await metrics_runner.cleanup()
            await upstream.close()
            await self._stop_triton(reaping)
        return status

    def _on_signal(self, signum: int) -> None:
        self.signals += 1
        assert self.stop_requested is not None
        if self.signals == 1:
            log.info("%s received: draining (readiness now 503)", signal.Signals(signum).name)
            self.health.set(Phase.DRAINING, f"{signal.Signals(signum).name} received")
            self.stop_requested.set()
        else:
            log.warning("%s received again: stopping now", signal.Signals(signum).name)
            self.triton.signal(signal.SIGKILL)

    async def _set_catalog(self, catalog: Catalog) -> None:
        log.info("limits: %s", catalog.describe_limits())
        assert self.pool is not None
        self.pool.set_catalog(catalog)  # the workers open the gRPC port with the models' limits

    async def _reap(self) -> None:
        """Collect every exited child (the gateway may be PID 1 in a container: the orphaned backend stubs of a dead
        server included); returns once tritonserver itself has exited. A worker's exit goes to the pool."""
        while True:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                code = os.waitstatus_to_exitcode(status)
                if pid == self.triton.pid:
                    self.triton.returncode = code
                elif self.pool is not None:
                    self.pool.exited(pid, code)
            if self.triton.returncode is not None:
                return
            await asyncio.sleep(0.2)

    async def _drain(self, pool: WorkerPool) -> int:
        """Readiness is 503 already (in every worker). Keep serving for the drain delay, then have every worker stop
        accepting connections and answer each request it is handling (at most the drain timeout) before it exits.
        (Not aiohttp's own graceful shutdown: it stops reading connections whose request body is still arriving,
        and such a request would hang until the timeout.)"""
        started = time.monotonic()
        if self.settings.drain_delay_s > 0:
            await asyncio.sleep(self.settings.drain_delay_s)
        left = await pool.drain(self.settings.drain_timeout_s)
        if left:
            log.warning("drain timeout (%gs): %d HTTP request(s) still in flight were cut off",
                        self.settings.drain_timeout_s, left)
        else:
            log.info("drained in %.2fs: every request accepted was answered; stopping tritonserver",
                     time.monotonic() - started)
        self.health.set(Phase.STOPPING, "drained")
        return 0

    async def _stop_triton(self, reaping: asyncio.Future) -> None:
        if self.triton.returncode is not None:
            return
        self.triton.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(reaping), self.settings.triton_exit_timeout_s + 5)
        except asyncio.TimeoutError:
            log.warning("tritonserver did not exit within %ds: killing it", self.settings.triton_exit_timeout_s + 5)
            self.triton.signal(signal.SIGKILL)
            await reaping
        log.info("tritonserver %s", self.triton.describe_exit())

    def _banner(self, catalog: Catalog | None) -> None:
        host = "localhost" if self.settings.host in ("0.0.0.0", "::", "") else self.settings.host
        lines = [f"Triton is ready: HTTP {host}:{self.settings.http_port}, gRPC {host}:{self.settings.grpc_port}, "
                 f"metrics {host}:{self.settings.metrics_port}."]
        for model in (catalog.ensembles if catalog else []):
            inputs = [{"name": t.name, "datatype": t.datatype, "shape": [1, 1], "data": [EXAMPLE_TEXT]}
                      for t in model.inputs]
            body = json.dumps({"inputs": inputs}, ensure_ascii=False, separators=(",", ":"))
            lines.append("Try:")
            lines.append(f"  curl -s -X POST http://{host}:{self.settings.http_port}/v2/models/{model.name}/infer "
                         f"-H 'Content-Type: application/json' -d '{body}'")
        lines.append("Ctrl-C (SIGTERM) stops the server once the requests in flight are answered.")
        print("\n".join(lines), file=sys.stderr, flush=True)


def main(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s tritoned %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        key = lockdown.admin_key()
        gateway = Gateway(settings, key)
        return gateway.run()
    except (lockdown.UnfitKey, tritonserver.ForbiddenOption, UsageError) as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 2
