"""The V2 inference service (``inference.GRPCInferenceService``) as served by every tier.

Every method takes the request's bytes and parses them itself, so garbage bytes are an
INVALID_ARGUMENT with a clear message (grpc's own deserializer would make them INTERNAL), and an
edge master can forward the original bytes untouched. What differs between tiers is a
:class:`V2Backend`: a device node decodes and runs (:class:`LocalBackend`); an edge master routes
and forwards (``fogline.adapters.grpc.forward``).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fogline._proto import inference_pb2 as pb
from fogline._version import __version__
from fogline.adapters.grpc import wire
from fogline.adapters.grpc.codec import decode_request, encode_response, positive_parameter
from fogline.adapters.grpc.status import TO_GRPC, as_fogline_error, status_details, trailing_metadata
from fogline.adapters.metrics import UNKNOWN_MODEL, Metrics
from fogline.core.parameters import PARAM_CODE, PARAM_TIMEOUT_MS
from fogline.core.serving.dataplane import LocalDataPlane
from fogline.core.tensors import ModelSpec
from fogline.errors import ErrorCode, FoglineError, InvalidInputError

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"


class V2Backend(abc.ABC):
    """What a tier does for each V2 call. ``deadline`` is on the ``time.monotonic`` clock."""

    name: str = "fogline"

    @abc.abstractmethod
    def ready(self) -> bool: ...

    @abc.abstractmethod
    async def model_ready(self, name: str, version: str) -> bool: ...

    @abc.abstractmethod
    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse: ...

    @abc.abstractmethod
    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        """Serve one ModelInfer call; ``data`` is ``request`` serialized, as received."""

    def known_model(self, name: str) -> bool:
        """Whether ``name`` may be used as a metrics label (bounded cardinality)."""
        return False


def metadata_message(spec: ModelSpec) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(name=spec.name, versions=[spec.version], platform=spec.platform)
    for specs, target in ((spec.inputs, msg.inputs), (spec.outputs, msg.outputs)):
        for t in specs:
            target.add(name=t.name, datatype=t.datatype, shape=t.shape)
    return msg


class LocalBackend(V2Backend):
    """A process that runs the models itself."""

    def __init__(self, dataplane: LocalDataPlane, name: str) -> None:
        self.dataplane = dataplane
        self.name = name

    def ready(self) -> bool:
        return self.dataplane.ready()

    async def model_ready(self, name: str, version: str) -> bool:
        try:
            self.dataplane.model(name, version)
        except FoglineError:
            return False
        return self.ready()

    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        return metadata_message(self.dataplane.model(name, version).spec)

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        served = self.dataplane.model(request.model_name, request.model_version)  # NOT_FOUND before any input
        req = decode_request(request)
        req.deadline = deadline
        resp = await self.dataplane.run(served, req)
        # Answer in kind: raw for raw requests (the fast path), typed contents for typed ones.
        raw = bool(request.raw_input_contents) or not request.inputs
        return encode_response(resp, raw=raw).SerializeToString()

    def known_model(self, name: str) -> bool:
        return name in self.dataplane.models


def _parse(message_type: Any, data: bytes) -> Any:
    try:
        return message_type.FromString(data)
    except DecodeError:
        raise InvalidInputError(
            f"request body is not a valid {message_type.DESCRIPTOR.full_name} message (protobuf decoding failed)"
        ) from None


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    err = as_fogline_error(exc)
    if err.code is ErrorCode.INTERNAL:
        log.warning("internal error serving a request", exc_info=exc)
    trailers = trailing_metadata(err)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(TO_GRPC[err.code], status_details(err.message))


def stream_deadline(request: pb.ModelInferRequest) -> float | None:
    """A streamed request's deadline, from the remaining time its sender put in its parameters;
    InvalidInputError unless that is a positive number of milliseconds."""
    timeout_ms = positive_parameter(request.parameters, PARAM_TIMEOUT_MS)
    return None if timeout_ms is None else time.monotonic() + timeout_ms / 1000


def stream_error(request_id: str, err: FoglineError) -> bytes:
    reply = pb.ModelStreamInferResponse(error_message=err.message)
    reply.infer_response.id = request_id
    reply.infer_response.parameters[PARAM_CODE].string_param = err.code.value
    return reply.SerializeToString()


Unary = Callable[["V2Servicer", bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _aborting(method: Unary) -> Unary:
    """The RPC's failures become its gRPC status (:func:`abort`)."""

    @functools.wraps(method)
    async def serve(self: V2Servicer, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await method(self, data, context)
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    return serve


class V2Servicer:
    """Serves ``backend`` as ``inference.GRPCInferenceService``: each method takes the request's bytes
    (parsed here, see the module docstring) and answers bytes; every inference is counted in ``metrics``."""

    def __init__(self, backend: V2Backend, metrics: Metrics) -> None:
        self.backend = backend
        self.metrics = metrics

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler with one method handler per RPC."""
        unary = {"ModelInfer": self.ModelInfer, "ServerLive": self.ServerLive, "ServerReady": self.ServerReady,
                 "ServerMetadata": self.ServerMetadata, "ModelReady": self.ModelReady,
                 "ModelMetadata": self.ModelMetadata}
        handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in unary.items()}
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self.ModelStreamInfer)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        """One inference, counted in the metrics whatever its outcome."""
        started = time.perf_counter()
        backend = self.backend
        model = request.model_name if backend.known_model(request.model_name) else UNKNOWN_MODEL
        try:
            out = await backend.infer(data, request, deadline)
        except Exception as exc:
            self.metrics.observe(model, as_fogline_error(exc).code.value, time.perf_counter() - started)
            raise
        self.metrics.observe(model, "OK", time.perf_counter() - started)
        return out

    @_aborting
    def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> Awaitable[bytes]:
        # NOTE: a plain method returning infer's coroutine: no coroutine of its own on the hot path.
        return self.infer(data, _parse(pb.ModelInferRequest, data), deadline_of(context))

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes],
                               context: grpc.aio.ServicerContext) -> None:
        """Serve every request of the stream concurrently; replies go out as they finish."""
        stream = _Stream(self)
        reader = asyncio.create_task(stream.read_all(requests))
        try:
            while (reply := await stream.replies.get()) is not None:
                await context.write(reply)
        finally:
            reader.cancel()
            stream.cancel()

    async def ServerLive(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def ServerReady(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=self.backend.ready()).SerializeToString()

    async def ServerMetadata(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerMetadataResponse(name=self.backend.name, version=__version__).SerializeToString()

    @_aborting
    async def ModelReady(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        req = _parse(pb.ModelReadyRequest, data)
        ready = await self.backend.model_ready(req.name, req.version)
        return pb.ModelReadyResponse(ready=ready).SerializeToString()

    @_aborting
    async def ModelMetadata(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        req = _parse(pb.ModelMetadataRequest, data)
        msg = await self.backend.model_metadata(req.name, req.version)
        return msg.SerializeToString()


class _Stream:
    """One ModelStreamInfer call: its requests served concurrently, their replies queued as they finish
    (None last)."""

    def __init__(self, servicer: V2Servicer) -> None:
        self._servicer = servicer
        self.replies: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._running: set[asyncio.Task[None]] = set()

    async def serve(self, data: bytes) -> None:
        request_id = ""
        try:
            request = _parse(pb.ModelInferRequest, data)
            request_id = request.id
            body = await self._servicer.infer(data, request, stream_deadline(request))
        except Exception as exc:
            self.replies.put_nowait(stream_error(request_id, as_fogline_error(exc)))
        else:
            self.replies.put_nowait(wire.stream_response(body))

    async def read_all(self, requests: AsyncIterator[bytes]) -> None:
        running = self._running
        async for data in requests:
            task = asyncio.create_task(self.serve(data))
            running.add(task)
            task.add_done_callback(running.discard)
        while running:
            await asyncio.wait(set(running))
        self.replies.put_nowait(None)

    def cancel(self) -> None:
        for task in list(self._running):
            task.cancel()


def v2_handler(backend: V2Backend, metrics: Metrics) -> grpc.GenericRpcHandler:
    """The generic handler that serves ``backend`` as ``inference.GRPCInferenceService``."""
    return V2Servicer(backend, metrics).handler()
