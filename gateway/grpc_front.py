"""The public gRPC port (grpcio aio): Triton's GRPCInferenceService served by generic handlers that forward the
request bytes unchanged to Triton's internal gRPC port. ModelInfer and ModelStreamInfer are parsed (Triton's own
protobuf messages, from tritonclient) and checked first: size, top-k on a string output. Load and unload are
refused; ServerReady and ModelReady tell the truth (false while broken, recovering or draining)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

import grpc
from tritonclient.grpc import service_pb2

from . import checks, grpc_wire
from .checks import Rejected
from .front_state import Front, FrontState

log = logging.getLogger("tritoned.grpc")
SERVICE = "inference.GRPCInferenceService"
REFUSED = ("RepositoryModelLoad", "RepositoryModelUnload")


def _forwarded_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, Any], ...]:
    return tuple((m.key, m.value) for m in context.invocation_metadata() or ()
                 if not m.key.startswith(("grpc-", ":")) and m.key not in ("user-agent", "content-type", "te"))


class GrpcFront(Front):
    def __init__(self, upstream_port: int, state: FrontState) -> None:
        super().__init__(state)
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.channel: grpc.aio.Channel | None = None
        self.reads: asyncio.Semaphore | None = None  # ModelInfer messages being received at once (see _infer)

    def server(self, max_message_bytes: int) -> grpc.aio.Server:
        """The public server; call in the event loop that will run it (grpc.aio binds to it)."""
        self.channel = grpc.aio.insecure_channel(
            self.upstream, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        # Half the budget for messages being received (not yet counted by the budget; each is copied again downstream).
        self.reads = asyncio.Semaphore(max(1, self.budget.capacity // (2 * max_message_bytes)))
        # No BDP probing: a stream's flow-control window stays 64 KiB, so a request whose handler does not read it
        # yet stays at the client; SO_REUSEPORT: the gateway's workers share the port.
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                          ("grpc.max_send_message_length", -1), ("grpc.http2.bdp_probe", 0),
                                          ("grpc.so_reuseport", 1)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, self._handlers()),))
        return server

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        handlers = {}
        for method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            name = method.name
            if name == "ModelInfer":
                self._model_infer = self.channel.unary_unary(f"/{SERVICE}/ModelInfer")
                self._retry_infer = self._forwarder(name)
                handlers[name] = grpc.stream_unary_rpc_method_handler(self._infer)  # a unary call on the wire
            elif name == "ModelStreamInfer":
                handlers[name] = grpc.stream_stream_rpc_method_handler(self._stream_infer)
            elif method.client_streaming or method.server_streaming:
                continue  # none other in Triton's service
            else:
                handlers[name] = grpc.unary_unary_rpc_method_handler(self._unary(name))
        return handlers

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.limits.upstream_timeout_s if remaining is None else min(remaining, self.limits.upstream_timeout_s)

    def _forwarder(self, name: str):
        assert self.channel is not None
        call = self.channel.unary_unary(f"/{SERVICE}/{name}")

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await call(request, metadata=_forwarded_metadata(context), timeout=self._timeout(context))
            except grpc.aio.AioRpcError as failure:
                await context.abort(failure.code(), failure.details() or "")
                raise

        return forward

    def _unary(self, name: str):
        forward = self._forwarder(name)

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if name in REFUSED:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    "loading and unloading models is not allowed through this server: the repository "
                                    "API is restricted to the models the server started with")
            answer = await forward(request, context)
            if name == "ServerReady" and not self.health.ready:
                return service_pb2.ServerReadyResponse(ready=False).SerializeToString()
            if name == "ModelReady" and not self.health.ready:
                return service_pb2.ModelReadyResponse(ready=False).SerializeToString()
            return answer

        return handle

    def _check(self, raw: bytes) -> str:
        """The model's name; Rejected when the request is too large or asks top-k of a string output."""
        model_name, topk = grpc_wire.scan(raw)  # not a whole parse: the texts are not copied
        limit = self.catalog.body_limit(model_name)
        if len(raw) > limit:
            raise checks.too_large(f"the request to model '{model_name}'", limit)
        checks.check_topk_names(model_name, self.catalog.get(model_name), topk)
        return model_name

    async def _infer(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        """ModelInfer, served as a stream-unary method: grpcio receives a unary request whole before its handler
        runs, so a burst of large requests would all be in memory at once. Here a request is received only once
        one of `reads` is free (until then HTTP/2 flow control keeps it at the client), and it holds the read until
        its bytes are admitted by the body budget, as an HTTP body is: at most the budget's worth of messages is
        being received beside the budget's worth being handled."""
        assert self.reads is not None
        timeout = self.limits.request_timeout_s
        try:
            await asyncio.wait_for(self.reads.acquire(), timeout)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"server busy: large requests are being received for "
                                f"{timeout:g}s (TRITONED_MAX_BYTES_IN_FLIGHT); retry later")
        reading = True
        try:
            try:
                raw = await asyncio.wait_for(context.read(), timeout)
            except asyncio.TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"the request did not arrive within {timeout:g}s")
            if raw is grpc.aio.EOF:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ModelInfer without a request message")
            try:
                self._check(raw)
            except Rejected as rejected:
                await context.abort(getattr(grpc.StatusCode, rejected.grpc_code), rejected.message)
            except Exception as failure:  # grpc_wire.Unreadable, DecodeError
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unreadable ModelInferRequest: {failure}")
            async with self.budget.hold(len(raw), timeout):
                self.reads.release()
                reading = False
                return await self._forward_infer(raw, context, self._retry_infer)
        except Rejected as rejected:
            await context.abort(getattr(grpc.StatusCode, rejected.grpc_code), rejected.message)
            raise
        finally:
            if reading:
                self.reads.release()

    async def _forward_infer(self, raw: bytes, context: grpc.aio.ServicerContext, forward) -> bytes:
        await self.health.wait_not_recovering(self._timeout(context))
        supervisor = self.supervisor
        generation = supervisor.generation if supervisor is not None else 0
        try:
            return await self._model_infer(raw, metadata=_forwarded_metadata(context), timeout=self._timeout(context))
        except grpc.aio.AioRpcError as failure:
            if checks.STUB_FAILURE in (failure.details() or "") and supervisor is not None and \
                    await supervisor.healed_since(generation, self._timeout(context)):
                log.info("gRPC request failed while a backend process was dead: sent again after the recovery")
                return await forward(raw, context)
            await context.abort(failure.code(), failure.details() or "")
            raise

    async def _stream_infer(self, requests: AsyncIterator[bytes],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Each request checked; a refused one gets an error response in the stream (as Triton answers a failed
        request of a stream), the stream goes on."""
        assert self.channel is not None
        call = self.channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")(
            metadata=_forwarded_metadata(context), timeout=context.time_remaining())
        out: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for raw in requests:
                    try:
                        self._check(raw)
                    except Rejected as rejected:
                        await out.put(_stream_error(raw, rejected.message))
                        continue
                    except Exception as failure:
                        await out.put(_stream_error(b"", f"unreadable ModelInferRequest: {failure}"))
                        continue
                    await self.health.wait_not_recovering(self.limits.upstream_timeout_s)
                    try:
                        async with self.budget.hold(len(raw), self.limits.request_timeout_s):
                            await call.write(raw)
                    except Rejected as rejected:
                        await out.put(_stream_error(raw, rejected.message))
            finally:
                await call.done_writing()

        async def drain() -> None:
            async for answer in call:
                await out.put(answer)

        writer = asyncio.ensure_future(pump())
        reader = asyncio.ensure_future(drain())
        both = asyncio.ensure_future(asyncio.gather(writer, reader))
        both.add_done_callback(lambda _: out.put_nowait(None))
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                yield item
            await both  # raises the upstream's error, if any
        except grpc.aio.AioRpcError as failure:
            await context.abort(failure.code(), failure.details() or "")
        finally:
            for task in (writer, reader):
                task.cancel()
            call.cancel()

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()


def _stream_error(raw: bytes, message: str) -> bytes:
    try:
        request = service_pb2.ModelInferRequest.FromString(raw)
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                                  id=request.id)
    except Exception:
        response = service_pb2.ModelInferResponse()
    return service_pb2.ModelStreamInferResponse(error_message=message, infer_response=response).SerializeToString()
