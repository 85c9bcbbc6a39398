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

from . import checks
from .budget import BodyBudget
from .catalog import Catalog
from .checks import Rejected
from .health import Health
from .settings import Limits

log = logging.getLogger("tritoned.grpc")
SERVICE = "inference.GRPCInferenceService"
REFUSED = ("RepositoryModelLoad", "RepositoryModelUnload")


def _forwarded_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, Any], ...]:
    return tuple((m.key, m.value) for m in context.invocation_metadata() or ()
                 if not m.key.startswith(("grpc-", ":")) and m.key not in ("user-agent", "content-type", "te"))


class GrpcFront:
    def __init__(self, upstream_port: int, limits: Limits, health: Health, budget: BodyBudget) -> None:
        self.limits = limits
        self.health = health
        self.budget = budget
        self.catalog = Catalog(models={}, limits=limits)
        self.supervisor = None  # set by the app
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.channel: grpc.aio.Channel | None = None

    def server(self, max_message_bytes: int) -> grpc.aio.Server:
        """The public server; call in the event loop that will run it (grpc.aio binds to it)."""
        self.channel = grpc.aio.insecure_channel(
            self.upstream, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                          ("grpc.max_send_message_length", -1)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, self._handlers()),))
        return server

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        handlers = {}
        for method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            name = method.name
            if name == "ModelInfer":
                self._model_infer = self.channel.unary_unary(f"/{SERVICE}/ModelInfer")
            if name == "ModelStreamInfer":
                handlers[name] = grpc.stream_stream_rpc_method_handler(self._stream_infer)
            elif method.client_streaming or method.server_streaming:
                continue  # none other in Triton's service
            else:
                handlers[name] = grpc.unary_unary_rpc_method_handler(self._unary(name))
        return handlers

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.limits.upstream_timeout_s if remaining is None else min(remaining, self.limits.upstream_timeout_s)

    def _unary(self, name: str):
        assert self.channel is not None
        call = self.channel.unary_unary(f"/{SERVICE}/{name}")

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await call(request, metadata=_forwarded_metadata(context), timeout=self._timeout(context))
            except grpc.aio.AioRpcError as failure:
                await context.abort(failure.code(), failure.details() or "")
                raise

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if name in REFUSED:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    "loading and unloading models is not allowed through this server: the repository "
                                    "API is restricted to the models the server started with")
            if name == "ModelInfer":
                return await self._infer(request, context, forward)
            answer = await forward(request, context)
            if name == "ServerReady" and not self.health.ready:
                return service_pb2.ServerReadyResponse(ready=False).SerializeToString()
            if name == "ModelReady" and not self.health.ready:
                return service_pb2.ModelReadyResponse(ready=False).SerializeToString()
            return answer

        return handle

    def _check(self, raw: bytes) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest.FromString(raw)
        limit = self.catalog.body_limit(request.model_name)
        if len(raw) > limit:
            raise checks.too_large(f"the request to model '{request.model_name}'", limit)
        topk = [output.name for output in request.outputs if "classification" in output.parameters
                and output.parameters["classification"].WhichOneof("parameter_choice") is not None
                and not (output.parameters["classification"].WhichOneof("parameter_choice") == "int64_param"
                         and output.parameters["classification"].int64_param == 0)]
        checks.check_topk_names(request.model_name, self.catalog.get(request.model_name), topk)
        return request

    async def _infer(self, raw: bytes, context: grpc.aio.ServicerContext, forward) -> bytes:
        try:
            self._check(raw)
        except Rejected as rejected:
            await context.abort(getattr(grpc.StatusCode, rejected.grpc_code), rejected.message)
        except Exception as failure:  # DecodeError
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unreadable ModelInferRequest: {failure}")
        try:
            async with self.budget.hold(len(raw), self.limits.request_timeout_s):
                return await self._forward_infer(raw, context, forward)
        except Rejected as rejected:
            await context.abort(getattr(grpc.StatusCode, rejected.grpc_code), rejected.message)
            raise

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
