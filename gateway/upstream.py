"""The gateway's HTTP client to Triton's internal port: pooled keep-alive connections, no automatic compression,
the admin key only where the gateway itself needs it (the supervisor)."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from . import lockdown
from .catalog import Catalog, Model
from .settings import Limits

log = logging.getLogger("tritoned.upstream")


class Upstream:
    def __init__(self, port: int, admin_key: str, limits: Limits) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.admin_key = admin_key
        self.limits = limits
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=30, force_close=False),
            auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=limits.upstream_timeout_s))

    async def close(self) -> None:
        await self.session.close()

    async def status(self, path: str, timeout: float = 2.0) -> int:
        """HTTP status of GET path; 0 when Triton does not answer."""
        try:
            async with self.session.get(self.base + path, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return 0

    async def get_json(self, path: str, timeout: float = 10.0) -> Any:
        async with self.session.get(self.base + path, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
            return json.loads(body)

    async def admin_post(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        """POST with the admin key (repository index, load, unload); RuntimeError when Triton refuses."""
        headers = {lockdown.ADMIN_HEADER: self.admin_key, "Content-Type": "application/json"}
        async with self.session.post(self.base + path, data=json.dumps(body or {}).encode(), headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = await response.read()
            if response.status != 200:
                raise RuntimeError(f"POST {path}: HTTP {response.status}: {text[:300]!r}")
            return json.loads(text) if text else None

    async def index(self) -> dict[str, str]:
        """Model name -> state (READY, UNAVAILABLE, LOADING...) from the repository index."""
        return {entry["name"]: entry.get("state", "") for entry in await self.admin_post("/v2/repository/index")}

    async def catalog(self) -> Catalog:
        """Metadata and configuration of every READY model."""
        models = {}
        for name, state in (await self.index()).items():
            if state != "READY":
                continue
            metadata = await self.get_json(f"/v2/models/{name}")
            config = await self.get_json(f"/v2/models/{name}/config")
            models[name] = Model.from_triton(metadata, config)
        return Catalog(models=models, limits=self.limits)

    async def infer(self, model: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        async with self.session.post(f"{self.base}/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status, await response.read()


class UpstreamClosed(ConnectionError):
    """Triton closed the connection (or never accepted it) before its answer was complete."""


class _Exchange(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to Triton, one request at a time: the answer is read by Content-Length
    (what Triton's HTTP server sends for every non-streaming answer) into one buffer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, dict[str, str], bool]] | None = None
        self.head_end = -1
        self.length = -1
        self.closed = False
        self.received = False  # any byte of the current answer
        self.headers: tuple[int, dict[str, str]] = (0, {})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(UpstreamClosed(f"tritonserver closed the connection{f': {exc}' if exc else ''}"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.buffer += data
        if self.head_end < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_end = end + 4
            try:
                self.headers = _parse_head(bytes(self.buffer[:end]))
            except UpstreamClosed as error:
                self._fail(error)
                return
            length = self.headers[1].get("content-length")
            if length is None or not length.isdigit():
                self._fail(UpstreamClosed("tritonserver answered without a Content-Length"))
                return
            self.length = int(length)
        if len(self.buffer) - self.head_end >= self.length and self.waiter is not None and not self.waiter.done():
            status, headers = self.headers
            body = bytes(self.buffer[self.head_end:self.head_end + self.length])
            keep = headers.get("connection", "").lower() != "close" and len(self.buffer) == self.head_end + self.length
            self.waiter.set_result((status, body, headers, keep))

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def send(self, data: list[bytes]) -> asyncio.Future[tuple[int, bytes, dict[str, str], bool]]:
        assert self.transport is not None
        self.buffer.clear()
        self.head_end = self.length = -1
        self.received = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines(data)
        return self.waiter


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise UpstreamClosed(f"not an HTTP answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class InferPool:
    """The workers' keep-alive connections to Triton's HTTP port for inference requests: a request is one write (head
    and body), its answer one buffer; none of a general HTTP client's per-request work (URL parsing, cookie jars,
    header multidicts, tracing hooks), which made up a quarter of the gateway's CPU per request."""

    SMALL = 1 << 16  # bodies up to this size are joined with the head: one write, one segment

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[_Exchange] = []

    async def _connection(self) -> tuple[_Exchange, bool]:
        while self.idle:
            exchange = self.idle.pop()
            if not exchange.closed:
                return exchange, True
        loop = asyncio.get_running_loop()
        _, exchange = await loop.create_connection(_Exchange, "127.0.0.1", self.port)
        return exchange, False

    async def post(self, path: str, body: bytes, headers: dict[str, str],
                   timeout: float) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers with lower-case names); UpstreamClosed or asyncio.TimeoutError."""
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        data = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(body)}\r\n{head}\r\n" \
            .encode("latin-1")
        chunks = [data + body] if len(body) <= self.SMALL else [data, body]
        for attempt in range(2):
            exchange, reused = await self._connection()
            try:
                status, answer, answer_headers, keep = await asyncio.wait_for(exchange.send(chunks), timeout)
            except UpstreamClosed:
                exchange.closed = True
                if reused and not exchange.received and attempt == 0:
                    continue  # Triton closed an idle connection as the request went out: once more on a new one
                raise
            except BaseException:
                exchange.closed = True
                if exchange.transport is not None:
                    exchange.transport.close()
                raise
            if keep and not exchange.closed:
                self.idle.append(exchange)
            elif exchange.transport is not None:
                exchange.transport.close()
            return status, answer, answer_headers
        raise AssertionError("unreachable")

    def close(self) -> None:
        for exchange in self.idle:
            if exchange.transport is not None:
                exchange.transport.close()
        self.idle.clear()
