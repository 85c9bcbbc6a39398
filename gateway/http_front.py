"""The public HTTP port (aiohttp): every request is checked, then forwarded to Triton's internal HTTP port with a
normalized Content-Type (Triton's HTTP library parses a form-urlencoded body itself and dies of a large one), a
JSON body that Triton parses the same way Python does, and only the headers Triton needs."""
from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import AsyncContextManager

import aiohttp
from aiohttp import web

from . import checks, lockdown, manifest, v2_schema
from .api_front import ApiFront
from .checks import Rejected
from .front_state import Front, FrontState
from .upstream import InferPool, UpstreamClosed

log = logging.getLogger("tritoned.http")

# The routes of Triton 2.51's HTTP server (src/http_server.cc), matched on the raw path as Triton matches them.
MODEL_ROUTE = re.compile(
    r"/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/(infer|generate|generate_stream|ready|config|stats|trace/setting))?")
REPOSITORY_CONTROL = re.compile(r"/v2/repository(?:/[^/]+)?/models/[^/]+/(?:load|unload)")
INFER_HEADER = "Inference-Header-Content-Length"
STUB_FAILURE = checks.STUB_FAILURE.encode()
PASSED_BACK = ("Content-Type", INFER_HEADER, "Content-Encoding")
JSON = checks.JSON
BINARY = "application/octet-stream"
UPSTREAM_CONNECTIONS = 1024  # requests forwarded to Triton at once (TEI's /info: max_concurrent_requests)


def error(status: int, message: str, close: bool = False) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    if close:
        response.force_close()
    return response


class HttpFront(Front):
    def __init__(self, upstream_port: int, state: FrontState) -> None:
        super().__init__(state)
        self.upstream = f"http://127.0.0.1:{upstream_port}"
        self.infer_pool = InferPool(upstream_port)  # inference requests: the lean path (upstream.InferPool)
        self.session: aiohttp.ClientSession | None = None
        self.in_flight = 0  # requests being handled: the drain waits for them
        self.apis = ApiFront(self, UPSTREAM_CONNECTIONS)  # the HF inference JSON and TEI routes

    def find_repository(self, tritonserver_command: list[str]) -> None:
        """The model repository whose tritoned.json the HF and TEI routes read: the one tritonserver serves."""
        self.apis.repository = manifest.repository_of(tritonserver_command)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1)  # bodies are read by read_body() with their own limit
        app.router.add_route("*", "/{tail:.*}", self.handle, expect_handler=self._expect)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _: web.Application) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS, keepalive_timeout=30),
            auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=self.limits.upstream_timeout_s))

    async def _close(self, _: web.Application) -> None:
        self.infer_pool.close()
        if self.session is not None:
            await self.session.close()

    # ------------------------------------------------------------------------------------------------ routing

    def body_limit(self, path: str) -> int:
        match = MODEL_ROUTE.fullmatch(path)
        if match and match.group(3) in ("infer", "generate", "generate_stream"):
            return self.catalog.body_limit(match.group(1))
        return self.apis.body_limit(path) or self.limits.body_overhead_bytes

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """Expect: 100-continue (curl sends it for bodies over 1 MB): a body over the limit is refused before the
        client sends it."""
        if request.headers.get("Expect", "").lower() != "100-continue":
            return error(417, "only Expect: 100-continue is understood", close=True)
        limit = self.body_limit(request.raw_path.split("?", 1)[0])
        if request.content_length is not None and request.content_length > limit:
            return error(413, checks.too_large("the request body", limit).message, close=True)
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        try:
            response = await self._route(request)
        finally:
            self.in_flight -= 1
        if self.health.ending and not response.prepared:
            response.force_close()  # draining: the client's next request goes to another server
        return response

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        method = request.method
        if method not in ("GET", "POST"):
            return error(405, "Method Not Allowed")
        try:
            if path == "/v2/health/ready":
                return await self._ready(method)
            if path == "/v2/health/live":
                return await self._live(method)
            match = MODEL_ROUTE.fullmatch(path)
            if match and match.group(3) in ("infer", "generate", "generate_stream") and method == "POST":
                return await self._inference(request, path, match.group(1), match.group(3))
            if match and match.group(3) == "ready":
                return await self._model_ready(request, path)
            if self.apis.serves(path, method):
                return await self.apis.handle(request, path)
            if REPOSITORY_CONTROL.fullmatch(path):
                return error(403, "loading and unloading models is not allowed through this server: the repository "
                                  "API is restricted to the models the server started with (a model whose backend "
                                  "process dies is reloaded by the server itself)")
            return await self._other(request, path)
        except Rejected as rejected:
            return error(rejected.http_status, rejected.message, close=rejected.http_status == 413)

    async def _ready(self, method: str) -> web.Response:
        if method != "GET":
            return error(405, "Method Not Allowed")
        if not self.health.ready:
            return error(503, f"not ready: {self.health.describe()}")
        status, _, _ = await self._send("GET", "/v2/health/ready", None, {})
        return web.Response(status=200) if status == 200 else error(503, "not ready: tritonserver is not ready")

    async def _live(self, method: str) -> web.Response:
        if method != "GET":
            return error(405, "Method Not Allowed")
        status, _, _ = await self._send("GET", "/v2/health/live", None, {})
        return web.Response(status=200) if status == 200 else error(503, "not live: tritonserver does not answer")

    async def _model_ready(self, request: web.Request, path: str) -> web.Response:
        response = await self._other(request, path)
        if response.status == 200 and not self.health.ready:
            return error(503, f"not ready: {self.health.describe()}")
        return response

    # ---------------------------------------------------------------------------------------------- forwarding

    def admit(self, request: web.Request, limit: int) -> AsyncContextManager[None]:
        """The body budget's hold for `request`'s body of at most `limit` bytes (a body of unknown or compressed size
        holds the whole limit); Rejected (413) at once when its Content-Length is over the limit, not after a wait
        for the budget."""
        if request.content_length is not None and request.content_length > limit:
            raise checks.too_large("the request body", limit)
        compressed = request.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity")
        size = limit if request.content_length is None or compressed else request.content_length
        return self.budget.hold(size, self.limits.request_timeout_s)

    async def _inference(self, request: web.Request, path: str, model_name: str, kind: str) -> web.StreamResponse:
        limit = self.catalog.body_limit(model_name)
        async with self.admit(request, limit):
            return await self._checked_inference(request, path, model_name, kind, limit)

    async def _checked_inference(self, request: web.Request, path: str, model_name: str, kind: str,
                                 limit: int) -> web.StreamResponse:
        body, headers = await self._checked_inference_body(request, model_name, kind, limit)
        if kind == "generate_stream":
            return await self._stream(request, path, body, headers)
        status, data, out_headers = await self.forward_inference(path, body, headers, model_name)
        if status >= 500:
            mapped = v2_schema.client_error(status, data)
            if mapped is not None:  # Triton's 500 for a request that breaks the v2 schema: a client error
                status, data = mapped
                out_headers = {"Content-Type": JSON}
        elif status == 200 and kind == "infer":
            length = out_headers.get(INFER_HEADER)
            data, new_length = v2_schema.dedupe_parameters(data, int(length) if length else None)
            if new_length is not None:
                out_headers[INFER_HEADER] = str(new_length)
        return web.Response(status=status, body=data, headers=out_headers)

    async def forward_inference(self, path: str, body: bytes, headers: dict[str, str],
                                model_name: str) -> tuple[int, bytes, dict[str, str]]:
        """Triton's answer to an inference request, sent again once when a dead backend process failed it and the
        supervisor has healed the model since."""
        supervisor = self.supervisor
        await self.health.wait_not_recovering(self.limits.upstream_timeout_s)
        generation = supervisor.generation if supervisor is not None else 0
        status, data, out_headers = await self._send_infer(path, body, headers)
        if status >= 500 and STUB_FAILURE in data and supervisor is not None and \
                await supervisor.healed_since(generation, self.limits.upstream_timeout_s):
            log.info("request to %s failed while a backend process was dead: sent again after the recovery",
                     model_name)
            status, data, out_headers = await self._send_infer(path, body, headers)
        return status, data, out_headers

    async def _checked_inference_body(self, request: web.Request, model_name: str, kind: str,
                                      limit: int) -> tuple[bytes, dict[str, str]]:
        """The body to forward and its headers; Rejected when the request must not reach Triton."""
        body = await self.read_body(request, limit)
        headers = self._common_headers(request)
        header_length = request.headers.get(INFER_HEADER)
        if kind != "infer" or header_length is None:
            if not body and kind == "infer":  # Triton reads an empty body as a raw binary request
                headers["Content-Type"] = BINARY
                return body, headers
            headers["Content-Type"] = JSON
            self._check_infer_json(body, model_name, kind)
            return body, headers
        value = header_length.strip()
        if not value.isdigit() or len(value) > 12 or int(value) > len(body):
            raise checks.invalid(f"{INFER_HEADER} must be a byte count from 0 to the body's length "
                                 f"({len(body)}), got {header_length[:40]!r}")
        length = int(value)
        headers["Content-Type"] = BINARY
        headers[INFER_HEADER] = str(length)
        if length:  # 0: a raw binary request, the whole body is one input's data
            self._check_infer_json(body[:length], model_name, kind)
        return body, headers

    def _check_infer_json(self, data: bytes, model_name: str, kind: str) -> None:
        parsed = checks.parse_json(data, self.limits.max_json_depth)
        if kind == "infer" and not (isinstance(parsed, dict) and isinstance(parsed.get("inputs"), list)):
            raise checks.invalid("Unable to parse 'inputs': an inference request is a JSON object with an 'inputs' "
                                 "array")  # Triton itself answers 500 to this
        if kind == "infer":
            checks.check_topk_names(model_name, self.catalog.get(model_name), checks.topk_outputs_of_json(parsed))

    async def _other(self, request: web.Request, path: str) -> web.Response:
        headers = self._common_headers(request)
        body: bytes | None = None
        if request.method == "POST":
            body = await self.read_body(request, self.limits.body_overhead_bytes)
            if body:
                checks.parse_json(body, self.limits.max_json_depth)
            headers["Content-Type"] = JSON
        elif request.content_length:
            raise checks.invalid("a GET request carries no body")
        status, data, out_headers = await self._send(request.method, path, body, headers)
        return web.Response(status=status, body=data, headers=out_headers)

    def _common_headers(self, request: web.Request) -> dict[str, str]:
        headers = {}
        key = request.headers.get(lockdown.ADMIN_HEADER)
        if key is not None:
            headers[lockdown.ADMIN_HEADER] = key
        accept = request.headers.get("Accept-Encoding", "").lower()
        tokens = {token.split(";", 1)[0].strip() for token in accept.split(",")}
        if "gzip" in tokens:
            headers["Accept-Encoding"] = "gzip"
        elif "deflate" in tokens:
            headers["Accept-Encoding"] = "deflate"
        return headers

    async def read_body(self, request: web.Request, limit: int) -> bytes:
        """The request body, inflated when gzip/deflate, at most `limit` bytes either way (413 otherwise), received
        within the request timeout (408 otherwise)."""
        if request.content_length is not None and request.content_length > limit:
            raise checks.too_large("the request body", limit)

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise checks.too_large("the request body", limit)
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            if request.content.is_eof():  # the whole body came with the headers (small requests): no timer, no task
                body = request.content.read_nowait(-1)
                if len(body) > limit:
                    raise checks.too_large("the request body", limit)
            else:
                body = await asyncio.wait_for(read(), self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise Rejected(408, "DEADLINE_EXCEEDED",
                           f"the request body did not arrive within {self.limits.request_timeout_s:g}s") from None
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding in ("gzip", "deflate"):
            return checks.inflate(body, encoding, limit)
        raise Rejected(415, "INVALID_ARGUMENT", f"unsupported Content-Encoding {encoding[:40]!r}: use gzip, deflate "
                                                 "or none")

    async def _send(self, method: str, path: str, body: bytes | None,
                    headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        assert self.session is not None
        try:
            async with self.session.request(method, self.upstream + path, data=body, headers=headers) as response:
                data = await response.read()
                return response.status, data, {k: response.headers[k] for k in PASSED_BACK if k in response.headers}
        except asyncio.TimeoutError:
            return 504, _error_body(f"tritonserver did not answer within {self.limits.upstream_timeout_s:g}s"), \
                {"Content-Type": JSON}
        except aiohttp.ClientError as failure:
            state = "is stopping" if self.health.ending else f"does not answer ({self.health.describe()})"
            log.debug("upstream %s %s: %r", method, path, failure)
            return 503, _error_body(f"tritonserver {state}"), {"Content-Type": JSON}

    async def _send_infer(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """An inference POST through the lean connection pool; errors answered as _send answers them."""
        try:
            status, data, answer_headers = await self.infer_pool.post(path, body, headers,
                                                                      self.limits.upstream_timeout_s)
            return status, data, {k: answer_headers[k.lower()] for k in PASSED_BACK if k.lower() in answer_headers}
        except asyncio.TimeoutError:
            return 504, _error_body(f"tritonserver did not answer within {self.limits.upstream_timeout_s:g}s"), \
                {"Content-Type": JSON}
        except (UpstreamClosed, OSError) as failure:
            state = "is stopping" if self.health.ending else f"does not answer ({self.health.describe()})"
            log.debug("upstream POST %s: %r", path, failure)
            return 503, _error_body(f"tritonserver {state}"), {"Content-Type": JSON}

    async def _stream(self, request: web.Request, path: str, body: bytes,
                      headers: dict[str, str]) -> web.StreamResponse:
        assert self.session is not None
        try:
            async with self.session.post(self.upstream + path, data=body, headers=headers) as upstream:
                response = web.StreamResponse(
                    status=upstream.status,
                    headers={k: upstream.headers[k] for k in PASSED_BACK if k in upstream.headers})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except asyncio.TimeoutError:
            return error(504, f"tritonserver did not answer within {self.limits.upstream_timeout_s:g}s")
        except aiohttp.ClientError:
            return error(503, "tritonserver does not answer")


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def metrics_app(upstream_port: int) -> web.Application:
    """The public metrics port: GET /metrics, proxied to Triton's; nothing else reaches Triton's metrics server."""
    session: dict[str, aiohttp.ClientSession] = {}
    url = f"http://127.0.0.1:{upstream_port}/metrics"

    async def metrics(request: web.Request) -> web.Response:
        if request.content_length:
            return error(400, "GET /metrics carries no body", close=True)
        try:
            async with session["client"].get(url) as response:
                data = await response.read()
                return web.Response(status=response.status, body=data,
                                    headers={"Content-Type": response.headers.get("Content-Type", "text/plain")})
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return error(503, "tritonserver's metrics do not answer")

    async def not_found(request: web.Request) -> web.Response:
        return error(404, "Not Found: this port serves GET /metrics only", close=True)

    async def open_session(_: web.Application) -> None:
        session["client"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                                  skip_auto_headers=("Accept-Encoding",))

    async def close_session(_: web.Application) -> None:
        await session["client"].close()

    app = web.Application(client_max_size=1)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", not_found)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    return app

