"""The gateway's life: bind the public ports, start tritonserver, serve, supervise, drain, exit.

Exit status: 0 after SIGTERM/SIGINT once every request in flight was answered; tritonserver's own status when it
ends by itself (non-zero: a crash or a model that failed to load); 1 when the supervisor cannot heal the server;
2 for a usage error (unfit admin key, a port in use, an option the gateway owns)."""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
import time

import grpc
from aiohttp import web

from . import lockdown, tritonserver
from .budget import BodyBudget
from .catalog import Catalog
from .grpc_front import GrpcFront
from .health import Health, Phase
from .http_front import HttpFront, metrics_app
from .settings import Settings
from .supervisor import Fatal, Supervisor
from .upstream import Upstream

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
            tritonserver.command(tritonserver.sized(settings.tritonserver), self.ports, admin_key,
                                 settings.triton_exit_timeout_s))
        budget = BodyBudget(settings.limits.max_bytes_in_flight, small=settings.limits.body_overhead_bytes)
        self.http = HttpFront(self.ports.http, settings.limits, self.health, budget)
        self.http.find_repository(settings.tritonserver)  # tritoned.json, for the HF and TEI APIs (issue 22)
        self.grpc = GrpcFront(self.ports.grpc, settings.limits, self.health, budget)
        self.stop_requested: asyncio.Event | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.signals = 0

    def run(self) -> int:
        # The sockets are bound before tritonserver starts (a port in use is an error at once) and tritonserver
        # starts before any thread exists (its parent-death signal is set between fork and exec).
        http_socket = _listen(self.settings.host, self.settings.http_port, "HTTP")
        metrics_socket = _listen(self.settings.host, self.settings.metrics_port, "metrics")
        grpc_probe = _listen(self.settings.host, self.settings.grpc_port, "gRPC")
        grpc_probe.close()  # gRPC binds its own socket once the models' limits are known
        self.triton.start()
        # Internal: clients use the public ports. (bench/ reads this line to measure what the front costs.)
        log.info("tritonserver's own ports (internal, 127.0.0.1): HTTP %d, gRPC %d, metrics %d",
                 self.ports.http, self.ports.grpc, self.ports.metrics)
        return asyncio.run(self._main(http_socket, metrics_socket))

    async def _main(self, http_socket: socket.socket, metrics_socket: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        upstream = Upstream(self.ports.http, self.admin_key, self.settings.limits)
        supervisor = Supervisor(self.settings.supervisor, self.triton, upstream, self.health, self._set_catalog)
        self.http.supervisor = self.grpc.supervisor = supervisor
        # auto_decompress=False: compressed bodies are inflated by the front itself, with a bound (checks.inflate).
        runner = web.AppRunner(self.http.app(), access_log=None, handle_signals=False, auto_decompress=False,
                               shutdown_timeout=2.0)  # the drain itself waits for the requests (see _drain)
        metrics_runner = web.AppRunner(await metrics_app(self.ports.metrics), access_log=None, handle_signals=False,
                                       auto_decompress=False)
        await runner.setup()
        await metrics_runner.setup()
        await web.SockSite(runner, http_socket).start()
        await web.SockSite(metrics_runner, metrics_socket).start()
        supervising = asyncio.ensure_future(supervisor.run())
        reaping = asyncio.ensure_future(self._reap())
        stopping = asyncio.ensure_future(self.stop_requested.wait())
        status = 0
        try:
            armed_once = False
            while True:
                done, _ = await asyncio.wait({supervising, reaping, stopping}, timeout=0.5,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not armed_once and self.health.ready:
                    armed_once = True
                    self._banner(supervisor.catalog)
                if stopping in done:
                    status = await self._drain(runner, self.grpc_server)
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
            if self.grpc_server is not None:
                await self.grpc_server.stop(0)
            await runner.cleanup()
            await metrics_runner.cleanup()
            await self.grpc.close()
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
        self.http.catalog = self.grpc.catalog = catalog
        log.info("limits: %s", catalog.describe_limits())
        if self.grpc_server is None:
            self.grpc_server = await self._start_grpc(catalog)

    async def _start_grpc(self, catalog: Catalog) -> grpc.aio.Server:
        server = self.grpc.server(catalog.largest_body_limit())
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        if ":" in self.settings.host:
            address = f"[{self.settings.host}]:{self.settings.grpc_port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise UsageError(f"cannot listen on {address} (gRPC): already in use?")
        await server.start()
        return server

    async def _reap(self) -> None:
        while not self.triton.reap():
            await asyncio.sleep(0.2)

    async def _drain(self, runner: web.AppRunner, grpc_server: grpc.aio.Server | None) -> int:
        """Readiness is 503 already. Keep serving for the drain delay, then stop accepting connections and wait for
        every request being handled (at most the drain timeout). (Not aiohttp's own graceful shutdown: it stops
        reading connections whose request body is still arriving, and such a request would hang until the
        timeout.)"""
        started = time.monotonic()
        if self.settings.drain_delay_s > 0:
            await asyncio.sleep(self.settings.drain_delay_s)
        for site in list(runner.sites):
            await site.stop()  # no new connections; open ones are served, each answer says Connection: close
        grpc_stopped = asyncio.ensure_future(grpc_server.stop(self.settings.drain_timeout_s)) \
            if grpc_server is not None else None
        deadline = started + self.settings.drain_delay_s + self.settings.drain_timeout_s
        while self.http.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.http.in_flight
        await runner.cleanup()  # closes the idle connections
        if grpc_stopped is not None:
            await grpc_stopped
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
    except (lockdown.UnfitKey, tritonserver.ForbiddenOption, tritonserver.SizingError, UsageError) as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 2
