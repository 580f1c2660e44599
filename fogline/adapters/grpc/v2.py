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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fogline._proto import inference_pb2 as pb
from fogline._version import __version__
from fogline.adapters.grpc.codec import decode_request, encode_response, positive_parameter
from fogline.adapters.grpc.status import TO_GRPC, as_fogline_error, status_details, trailing_metadata
from fogline.adapters.grpc.wire import length_delimited
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


def v2_handler(backend: V2Backend, metrics: Metrics) -> grpc.GenericRpcHandler:
    """The generic handler that serves ``backend`` as ``inference.GRPCInferenceService``."""

    async def infer(data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        """One inference, counted in the metrics whatever its outcome."""
        started = time.perf_counter()
        model = request.model_name if backend.known_model(request.model_name) else UNKNOWN_MODEL
        try:
            out = await backend.infer(data, request, deadline)
        except Exception as exc:
            metrics.observe(model, as_fogline_error(exc).code.value, time.perf_counter() - started)
            raise
        metrics.observe(model, "OK", time.perf_counter() - started)
        return out

    async def model_infer(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            request = _parse(pb.ModelInferRequest, data)
            return await infer(data, request, deadline_of(context))
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    async def model_stream_infer(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        """Serve every request of the stream concurrently; replies go out as they finish."""
        replies: asyncio.Queue[bytes | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def serve(data: bytes) -> None:
            request_id = ""
            try:
                request = _parse(pb.ModelInferRequest, data)
                request_id = request.id
                body = await infer(data, request, stream_deadline(request))
            except Exception as exc:
                replies.put_nowait(stream_error(request_id, as_fogline_error(exc)))
            else:
                replies.put_nowait(length_delimited(2, body))  # ModelStreamInferResponse.infer_response

        async def read_all() -> None:
            async for data in requests:
                task = asyncio.create_task(serve(data))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.wait(set(running))
            replies.put_nowait(None)

        reader = asyncio.create_task(read_all())
        try:
            while (reply := await replies.get()) is not None:
                await context.write(reply)
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def server_live(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=backend.ready()).SerializeToString()

    async def server_metadata(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerMetadataResponse(name=backend.name, version=__version__).SerializeToString()

    async def model_ready(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            req = _parse(pb.ModelReadyRequest, data)
            ready = await backend.model_ready(req.name, req.version)
        except Exception as exc:
            await abort(context, exc)
            raise
        return pb.ModelReadyResponse(ready=ready).SerializeToString()

    async def model_metadata(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            req = _parse(pb.ModelMetadataRequest, data)
            msg = await backend.model_metadata(req.name, req.version)
        except Exception as exc:
            await abort(context, exc)
            raise
        return msg.SerializeToString()

    unary: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]] = {
        "ModelInfer": model_infer,
        "ServerLive": server_live,
        "ServerReady": server_ready,
        "ServerMetadata": server_metadata,
        "ModelReady": model_ready,
        "ModelMetadata": model_metadata,
    }
    handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in unary.items()}
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(model_stream_infer)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
