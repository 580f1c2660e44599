"""The V2 inference service (``inference.GRPCInferenceService``) as served by every tier.

Every method takes the request's bytes and parses them itself, so garbage bytes are an
INVALID_ARGUMENT with a clear message (grpc's own deserializer would make them INTERNAL), and an
edge master can forward the original bytes untouched. What differs between tiers is a
:class:`V2Backend`: a device node decodes and runs (:class:`LocalBackend`); an edge master routes
and forwards (``fogline.adapters.grpc.forward``).

With :class:`~fogline.core.security.apikeys.ApiKeys`, calls that use a model need an API key
(metadata ``authorization: Bearer <key>``) allowed that model; see :class:`V2Servicer`.

With tracing on, each inference (a ModelInfer call, or one request of a stream) is a SERVER span
under the caller's trace context (``fogline.adapters.tracing`` says where it is found).
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
from fogline.adapters import tracing
from fogline.adapters.grpc import wire
from fogline.adapters.grpc.codec import decode_request, encode_response, positive_parameter
from fogline.adapters.grpc.status import TO_GRPC, as_fogline_error, status_details, trailing_metadata
from fogline.adapters.metrics import UNKNOWN_MODEL, Metrics
from fogline.adapters.tls.credentials import peer_identity
from fogline.core.observe.spans import PROCESS_SPANS, SERVER, Spans, succeeded
from fogline.core.parameters import PARAM_CODE, PARAM_TIMEOUT_MS
from fogline.core.security.apikeys import ApiKeys
from fogline.core.serving.dataplane import LocalDataPlane
from fogline.core.tensors import ModelSpec
from fogline.errors import ErrorCode, FoglineError, InvalidInputError

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
UNARY_SPAN = f"{SERVICE}/ModelInfer"
STREAM_SPAN = f"{SERVICE}/ModelStreamInfer"


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


def metadata_message(spec: ModelSpec, versions: list[str] | None = None) -> pb.ModelMetadataResponse:
    """``spec`` as V2 model metadata; ``versions``: those loaded (default: the spec's own)."""
    msg = pb.ModelMetadataResponse(name=spec.name, versions=versions or [spec.version], platform=spec.platform)
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
        """The metadata of ``name`` at ``version`` ("" the serving one), listing the versions loaded."""
        served = self.dataplane.model(name, version)
        return metadata_message(served.spec, self.dataplane.loaded_versions(name))

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        served = self.dataplane.model(request.model_name, request.model_version)  # NOT_FOUND before any input
        req = decode_request(request)
        req.deadline = deadline
        resp = await self.dataplane.run(served, req)  # resp.version: the version that ran, whatever was asked
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
Infer = Callable[[bytes, pb.ModelInferRequest, "float | None"], Awaitable[bytes]]
"""What serves one parsed inference request of a stream: :meth:`V2Servicer.infer`, or it behind a key check."""

AUTHORIZATION = "authorization"


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
    (parsed here, see the module docstring) and answers bytes; every inference is counted in ``metrics``.

    With ``api_keys``, ModelInfer, ModelMetadata and ModelReady need the metadata ``authorization:
    Bearer <key>`` of a key allowed the model the request names (UNAUTHENTICATED without a valid key,
    PERMISSION_DENIED for a model the key may not use). ModelStreamInfer checks the key when the call
    opens, then each request's model: a model the key may not use fails that request only, as an error
    reply on the stream. ServerLive, ServerReady and ServerMetadata stay open, like Triton's health
    endpoints. A refused inference is counted in ``metrics`` under its model's label only if that model
    is served (else ``_unknown``): callers without a key add no label values.

    A call whose client certificate names a master of the fleet (an edge master forwarding to a device
    node or a worker, a cloud master to an edge) needs no key: it forwards requests on behalf of callers the tier they
    entered at has checked. NOTE: only the tier that faces callers holds their keys; members never
    forward a caller's metadata. Without ``api_keys`` the handlers are those of an open server, with no
    check of any kind on their path.
    """

    def __init__(self, backend: V2Backend, metrics: Metrics, *, api_keys: ApiKeys | None = None,
                 spans: Spans = PROCESS_SPANS) -> None:
        self.backend = backend
        self.metrics = metrics
        self.api_keys = api_keys
        self.spans = spans

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler with one method handler per RPC (the key-checking ones with API keys)."""
        unary = {"ModelInfer": self.ModelInfer, "ServerLive": self.ServerLive, "ServerReady": self.ServerReady,
                 "ServerMetadata": self.ServerMetadata, "ModelReady": self.ModelReady,
                 "ModelMetadata": self.ModelMetadata}
        stream = self.ModelStreamInfer
        if self.api_keys is not None:
            unary.update(ModelInfer=self._keyed_model_infer, ModelReady=self._keyed_model_ready,
                         ModelMetadata=self._keyed_model_metadata)
            stream = self._keyed_model_stream_infer
        handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in unary.items()}
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(stream)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def label(self, model: str) -> str:
        """The metrics label of ``model``: its name if it is served, else ``_unknown`` (bounded cardinality)."""
        return model if self.backend.known_model(model) else UNKNOWN_MODEL

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

    async def traced(self, infer: Infer, data: bytes, request: pb.ModelInferRequest, deadline: float | None,
                     parent: object | None, name: str = UNARY_SPAN) -> bytes:
        """``infer`` of ``request`` in a SERVER span under ``parent`` (the caller's trace context, if any),
        with the model, the version that answered and the outcome."""
        attributes = {"rpc.system": "grpc", "fogline.model": request.model_name,
                      "fogline.model_version": request.model_version}
        with self.spans.span(name, attributes, kind=SERVER, parent=parent) as span:
            body = await infer(data, request, deadline)  # NOTE: called in the span: a key check may raise at once
            succeeded(span, {"fogline.model_version": wire.model_version(body)})
            return body

    def _unary(self, infer: Infer, data: bytes, request: pb.ModelInferRequest,
               context: grpc.aio.ServicerContext) -> Awaitable[bytes]:
        """One ModelInfer call's inference, traced when tracing is on (context: metadata, else parameters)."""
        deadline = deadline_of(context)
        if not self.spans.enabled:
            return infer(data, request, deadline)
        parent = tracing.from_metadata(context.invocation_metadata()) or tracing.from_parameters(request.parameters)
        return self.traced(infer, data, request, deadline, parent)

    def _stream_traced(self, infer: Infer, context: grpc.aio.ServicerContext) -> Infer:
        """``infer`` for each request of a stream, traced while tracing is on (context: the request's
        parameters, else the stream's metadata)."""

        def serve(data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> Awaitable[bytes]:
            if not self.spans.enabled:
                return infer(data, request, deadline)
            parent = tracing.from_parameters(request.parameters) or tracing.from_metadata(context.invocation_metadata())
            return self.traced(infer, data, request, deadline, parent, STREAM_SPAN)

        return serve

    @_aborting
    def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> Awaitable[bytes]:
        # NOTE: a plain method returning infer's coroutine: no coroutine of its own on the hot path.
        return self._unary(self.infer, data, _parse(pb.ModelInferRequest, data), context)

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes],
                               context: grpc.aio.ServicerContext) -> None:
        """Serve every request of the stream concurrently; replies go out as they finish."""
        await self._serve_stream(self.infer, requests, context)

    async def _serve_stream(self, infer: Infer, requests: AsyncIterator[bytes],
                            context: grpc.aio.ServicerContext) -> None:
        stream = _Stream(self._stream_traced(infer, context))
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

    # --- With API keys ------------------------------------------------------------------------------

    @_aborting
    async def _keyed_model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = self._authorized(pb.ModelInferRequest, data, context, count=True)
        return await self._unary(self.infer, data, request, context)

    @_aborting
    async def _keyed_model_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        req = self._authorized(pb.ModelReadyRequest, data, context, count=False)
        ready = await self.backend.model_ready(req.name, req.version)
        return pb.ModelReadyResponse(ready=ready).SerializeToString()

    @_aborting
    async def _keyed_model_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        req = self._authorized(pb.ModelMetadataRequest, data, context, count=False)
        return (await self.backend.model_metadata(req.name, req.version)).SerializeToString()

    async def _keyed_model_stream_infer(self, requests: AsyncIterator[bytes],
                                        context: grpc.aio.ServicerContext) -> None:
        try:
            infer = self._stream_infer(context)
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises
        await self._serve_stream(infer, requests, context)

    def _authorized(self, message_type: Any, data: bytes, context: grpc.aio.ServicerContext, *,
                    count: bool) -> Any:
        """``data`` parsed, once the caller may use the model it names; a refused ModelInfer is counted
        (``count``). Bytes that do not parse are UNAUTHENTICATED for a caller without a valid key."""
        member = _from_member(context)
        try:
            request = _parse(message_type, data)
        except InvalidInputError:
            if not member:
                self._check_key(_authorization(context), None, count=count)
            raise
        if not member:
            model = request.model_name if message_type is pb.ModelInferRequest else request.name
            self._check_key(_authorization(context), model, count=count)
        return request

    def _check_key(self, authorization: str | None, model: str | None, *, count: bool) -> None:
        """Raise unless the key in ``authorization`` may use ``model`` (None: is valid at all)."""
        assert self.api_keys is not None
        try:
            if model is None:
                self.api_keys.check_any(authorization)
            else:
                self.api_keys.check(authorization, model)
        except FoglineError as exc:
            if count:
                self.metrics.observe(self.label(model or ""), exc.code.value, 0.0)
            raise

    def _stream_infer(self, context: grpc.aio.ServicerContext) -> Infer:
        """What serves each request of a stream whose call opened with ``context``: the caller's key is
        checked now, then against each request's model (re-read keys apply: a revoked key stops)."""
        if _from_member(context):
            return self.infer
        authorization = _authorization(context)
        self._check_key(authorization, None, count=True)

        def infer(data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> Awaitable[bytes]:
            self._check_key(authorization, request.model_name, count=True)
            return self.infer(data, request, deadline)

        return infer


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The call's ``authorization`` metadata; None without one."""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION:
            return value if isinstance(value, str) else None
    return None


FORWARDERS = frozenset({"edge", "cloud"})
"""The services that forward callers' requests (the masters): their calls need no API key."""


def _from_member(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call's client certificate names a master of the fleet forwarding requests (see
    :class:`V2Servicer`); a device or worker certificate forwards nothing and gets no exemption."""
    identity = peer_identity(context)
    return identity is not None and identity.service in FORWARDERS


class _Stream:
    """One ModelStreamInfer call: its requests served concurrently, their replies queued as they finish
    (None last)."""

    def __init__(self, infer: Infer) -> None:
        self._infer = infer
        self.replies: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._running: set[asyncio.Task[None]] = set()

    async def serve(self, data: bytes) -> None:
        request_id = ""
        try:
            request = _parse(pb.ModelInferRequest, data)
            request_id = request.id
            body = await self._infer(data, request, stream_deadline(request))
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


def v2_handler(backend: V2Backend, metrics: Metrics, *, api_keys: ApiKeys | None = None,
               spans: Spans = PROCESS_SPANS) -> grpc.GenericRpcHandler:
    """The generic handler that serves ``backend`` as ``inference.GRPCInferenceService``, checking API
    keys when ``api_keys`` is given (see :class:`V2Servicer`), recording ``spans``."""
    return V2Servicer(backend, metrics, api_keys=api_keys, spans=spans).handler()
