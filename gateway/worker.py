"""One worker process of the gateway (started by gateway/workers.py, never by hand): serves the public HTTP port on
the socket it inherits and the public gRPC port (bound with SO_REUSEPORT beside the other workers), with its share
of the body budget. Health, the supervisor's recovery generation and the catalog come from the main process; a
request failed by a dead backend process pokes the main process's supervisor and is sent again once it healed.
SIGINT and SIGTERM are the main process's business: a worker drains when the main process says so, and ends when
the main process is gone (its control pipe closes)."""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

PR_SET_PDEATHSIG = 1


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.worker",
                                     description="A worker of the gateway, started by `python -m gateway` only.")
    parser.add_argument("--index", type=int, required=True, help="the worker's number")
    parser.add_argument("--control", type=int, required=True, help="fd: messages from the main process")
    parser.add_argument("--events", type=int, required=True, help="fd: messages to the main process")
    parser.add_argument("--http-socket", type=int, required=True, help="fd: the HTTP listening socket")
    return parser.parse_args(argv)


def _read_hello(fd: int) -> dict[str, Any]:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise SystemExit("gateway worker: the main process is gone")
        line += chunk
    return json.loads(line)["hello"]


class WorkerServer:
    def __init__(self, index: int, control: int, events: int, http_socket: socket.socket,
                 hello: dict[str, Any]) -> None:
        from .budget import BodyBudget
        from .catalog import Catalog
        from .front_state import FrontState
        from .grpc_front import GrpcFront
        from .health import Health
        from .http_front import HttpFront
        from .settings import Settings

        self.index = index
        self.control = control
        self.events = events
        self.http_socket = http_socket
        self.settings = Settings.from_json(hello["settings"])
        self.health = Health()
        self.generation = 0
        limits = self.settings.limits
        budget = BodyBudget(int(hello["capacity"]), small=limits.body_overhead_bytes)
        self.fronts = FrontState(limits, self.health, budget, Catalog(models={}, limits=limits), supervisor=self)
        self.http = HttpFront(int(hello["upstream"]["http"]), self.fronts)
        self.http.find_repository(self.settings.tritonserver)  # tritoned.json, for the HF and TEI APIs
        self.grpc = GrpcFront(int(hello["upstream"]["grpc"]), self.fronts)
        self.grpc_server: Any = None
        self.done: asyncio.Future[float | None] | None = None  # drain timeout, or None: the main process is gone

    # ------------------------------------------------------------------ what the fronts use of the supervisor

    def poke(self) -> None:
        from .workers import send
        send(self.events, {"poke": True})

    async def healed_since(self, generation: int, timeout: float) -> bool:
        from .health import healed_since
        return await healed_since(self, self.health, generation, timeout)

    # ------------------------------------------------------------------ messages from the main process

    def _on_message(self, message: dict[str, Any]) -> None:
        from .health import Phase
        from .workers import catalog_from_wire
        if "health" in message:
            state = message["health"]
            self.generation = int(state["generation"])
            self.health.mirror(Phase[state["phase"]], state["reason"])
        elif "catalog" in message:
            catalog = catalog_from_wire(message["catalog"], self.settings.limits)
            self.fronts.catalog = catalog
            if self.grpc_server is None:
                self.grpc_server = asyncio.ensure_future(self._start_grpc(catalog))
        elif "drain" in message and self.done is not None and not self.done.done():
            self.done.set_result(float(message["drain"]))

    def _on_eof(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def _start_grpc(self, catalog: Any) -> Any:
        from .workers import send
        server = self.grpc.server(catalog.largest_body_limit())
        host, port = self.settings.host, self.settings.grpc_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            send(self.events, {"fatal": f"cannot listen on {address} (gRPC): already in use?"})
            return None
        await server.start()
        return server

    # ------------------------------------------------------------------ life

    async def run(self) -> int:
        from aiohttp import web

        from .workers import LineReader, send
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: None)  # the main process decides
        self.done = loop.create_future()
        reader = LineReader(self.control, self._on_message, self._on_eof)
        runner = web.AppRunner(self.http.app(), access_log=None, handle_signals=False, auto_decompress=False,
                               shutdown_timeout=2.0)
        await runner.setup()
        self.http_socket.setblocking(False)
        await web.SockSite(runner, self.http_socket).start()
        timeout = await self.done
        left = 0
        if timeout is None:  # the main process is gone: nobody supervises Triton any more
            timeout = 0.0
        started = time.monotonic()
        for site in list(runner.sites):
            await site.stop()  # no new connections; open ones are served, each answer says Connection: close
        grpc_server = await self.grpc_server if self.grpc_server is not None else None
        grpc_stopped = asyncio.ensure_future(grpc_server.stop(timeout)) if grpc_server is not None else None
        while self.http.in_flight and time.monotonic() < started + timeout:
            await asyncio.sleep(0.05)
        left = self.http.in_flight
        await runner.cleanup()
        if grpc_stopped is not None:
            await grpc_stopped
        await self.grpc.close()
        send(self.events, {"drained": {"left": left}})
        reader.close()
        return 0


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main process drains
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return 1
    args = _arguments(argv)
    hello = _read_hello(args.control)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s tritoned[worker {args.index}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    http_socket = socket.socket(fileno=args.http_socket)
    server = WorkerServer(args.index, args.control, args.events, http_socket, hello)
    from .workers import install_event_loop
    install_event_loop()
    return asyncio.run(server.run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
