"""The Fogline client SDK: V2 inference over gRPC with raw binary tensors and endpoint failover.

    async with fogline.Client(["127.0.0.1:8001", "10.0.1.5:8001"]) as client:
        result = await client.infer("mlp", {"input": np.zeros((1, 64), np.float32)})
        result.outputs["logits"], result.tier, result.node, result.route

Over TLS (what a secure ``fogline up`` needs: its state file names the files), and with an API key::

    tls = fogline.TLS(ca="ca.pem", cert="client.pem", key="client.key")
    fogline.Client("127.0.0.1:8001", tls=tls, api_key="fogline-ak-...")

:class:`SyncClient` offers the same calls without asyncio.

Tracing: when the process has OpenTelemetry set up (``fogline.adapters.tracing``, or an application's
own global tracer provider), each ``infer`` is a CLIENT span with one child CLIENT span per attempt,
whose W3C trace context goes to the server in the call's metadata; ``InferResult.trace_id`` names
the trace.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from fogline._proto import inference_pb2 as pb
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.adapters import tracing
from fogline.adapters.grpc.codec import decode_outputs, decode_parameters, encode_request
from fogline.adapters.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, channel_options
from fogline.adapters.grpc.status import translated
from fogline.core.observe.spans import CLIENT, NO_SPAN, Span, Spans, succeeded
from fogline.core.parameters import PARAM_DEGRADED, PARAM_NODE, PARAM_ROUTE, PARAM_SESSION, PARAM_TIER
from fogline.core.routing.attempt import RetryElsewhere, attempt
from fogline.core.routing.breaker import BreakerSettings, CircuitBreaker, Permit
from fogline.core.tensors import ParameterValue, TensorSpec
from fogline.errors import DeadlineExceededError, FoglineError, UnavailableError

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...] | None
Call = Callable[[pb_grpc.GRPCInferenceServiceStub, float, Metadata], Awaitable[T]]
"""One RPC on a stub, given its timeout and metadata."""
INFER_SPAN = "fogline.infer"
ATTEMPT_SPAN = "inference.GRPCInferenceService/ModelInfer"

# A client sees one endpoint per region: a region that failed twice in a row is left alone for a
# second before a probe, and is back after two good answers.
CLIENT_BREAKER = BreakerSettings(consecutive_failures=2, probe_successes=2)

@dataclass(frozen=True, kw_only=True)
class TLS:
    """TLS to the endpoints: trust ``ca`` (PEM file), and present ``cert``/``key`` (PEM files) where
    the server asks for a client certificate. ``server_name`` checks the server's certificate for
    that name instead of the endpoint's host."""

    ca: str | Path
    cert: str | Path | None = None
    key: str | Path | None = field(default=None, repr=False)
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """grpc channel credentials of these files (read now)."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: give both cert and key, or neither")
        read = lambda path: Path(path).read_bytes() if path is not None else None  # noqa: E731
        return grpc.ssl_channel_credentials(root_certificates=read(self.ca), private_key=read(self.key),
                                            certificate_chain=read(self.cert))


@dataclass(frozen=True)
class InferResult:
    """Outputs of one request, and where and why it ran."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]
    parameters: dict[str, ParameterValue]
    endpoint: str
    id: str = ""
    trace_id: str = ""
    """The trace of the request (32 hex digits), when this client traced it; "" otherwise."""

    @property
    def tier(self) -> str:
        return str(self.parameters.get(PARAM_TIER, ""))

    @property
    def node(self) -> str:
        return str(self.parameters.get(PARAM_NODE, ""))

    @property
    def route(self) -> str:
        """Why it ran there: placement, hint, overflow, failover, cascade-easy, cascade-hard, degraded."""
        return str(self.parameters.get(PARAM_ROUTE, ""))

    @property
    def degraded(self) -> bool:
        """A cascade's device answer, returned because the cloud could not be reached."""
        return bool(self.parameters.get(PARAM_DEGRADED, False))


@dataclass(frozen=True)
class ModelMetadata:
    """What a model takes and returns, as its server describes it."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)


class Client:
    """An asyncio client for one or more V2 endpoints (edge masters of several regions, device nodes,
    the cloud master), in order of preference.

    Each endpoint has a circuit breaker. A call goes to the first endpoint whose circuit takes it;
    when that one is unreachable, overloaded or (with ``attempt_timeout_s``) does not answer in
    time, the call moves on to the next, within the call's timeout. An endpoint whose circuit opened
    gets probes again after a while and, once they succeed, its traffic back: a region that was
    down is used again when it recovers. If every circuit is open, every endpoint is tried.
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout_s: float = 10.0,
                 attempt_timeout_s: float | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 breaker: BreakerSettings | None = None, tls: TLS | None = None, api_key: str | None = None,
                 spans: Spans | None = None) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(dict.fromkeys(endpoints))
        if not self.endpoints:
            raise ValueError("at least one endpoint (host:port) is required")
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self._options: list[tuple[str, Any]] = list(channel_options(max_message_bytes))
        if tls is not None and tls.server_name:
            self._options.append(("grpc.ssl_target_name_override", tls.server_name))
        self._credentials = tls.credentials() if tls is not None else None
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self._stubs: dict[str, pb_grpc.GRPCInferenceServiceStub] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._breaker_settings = breaker or CLIENT_BREAKER
        self.breakers = {e: CircuitBreaker(self._breaker_settings) for e in self.endpoints}
        self.spans: Spans = spans if spans is not None else tracing.client_spans()
        """Where the client's spans go (see the module docstring); NO_SPANS records none."""

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Replace the endpoints (in order of preference), e.g. as discovery reports them; known ones
        keep their breakers. Ignored if empty: the last known endpoints are better than none."""
        endpoints = list(dict.fromkeys(endpoints))
        if not endpoints:
            return
        self.breakers = {e: self.breakers.get(e) or CircuitBreaker(self._breaker_settings) for e in endpoints}
        self.endpoints = endpoints

    def _stub(self, endpoint: str) -> pb_grpc.GRPCInferenceServiceStub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            channel = (grpc.aio.insecure_channel(endpoint, options=self._options) if self._credentials is None
                       else grpc.aio.secure_channel(endpoint, self._credentials, options=self._options))
            self._channels.append(channel)
            stub = self._stubs[endpoint] = pb_grpc.GRPCInferenceServiceStub(channel)
        return stub

    async def _call(self, call: Call[T], timeout_s: float | None, *, traced: bool = False) -> tuple[T, str]:
        """``call`` at the endpoints in turn (see the class docstring); ``traced``: each attempt in a span
        of its own, when tracing is on. The answer and the endpoint that gave it."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s)
        errors: list[FoglineError] = []
        tried: set[str] = set()
        for force in (False, True):  # a second, forced pass only if every circuit refused
            for endpoint in self.endpoints:
                permit = None if endpoint in tried else self.breakers[endpoint].allow(force=force)
                if permit is None:
                    continue
                tried.add(endpoint)
                try:
                    if traced and self.spans.enabled:
                        return await self._traced_attempt(endpoint, permit, call, deadline), endpoint
                    return await self._attempt(endpoint, permit, call, deadline, self._metadata), endpoint
                except RetryElsewhere as retry:
                    errors.append(retry.error)
            if tried:
                break
        if len(errors) == 1:
            raise errors[0]
        raise UnavailableError(f"no endpoint answered: {'; '.join(map(str, errors))}")

    async def _traced_attempt(self, endpoint: str, permit: Permit, call: Call[T], deadline: float) -> T:
        """:meth:`_attempt` in a CLIENT span whose context goes to the server in the call's metadata."""
        with self.spans.span(ATTEMPT_SPAN, {"rpc.system": "grpc", "fogline.endpoint": endpoint}, kind=CLIENT) as span:
            result = await self._attempt(endpoint, permit, call, deadline, tracing.outgoing_metadata(self._metadata))
            succeeded(span)
            return result

    async def _attempt(self, endpoint: str, permit: Permit, call: Call[T], deadline: float, metadata: Metadata) -> T:
        """One try at ``endpoint`` (:func:`attempt`): RetryElsewhere if another endpoint should be tried,
        the error itself if it is final."""
        breaker = self.breakers[endpoint]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            breaker.release(permit)
            raise DeadlineExceededError(f"the call's timeout passed before {endpoint} could be tried")
        stub = self._stub(endpoint)
        return await attempt(breaker, permit,
                             lambda timeout_s: translated(call(stub, timeout_s, metadata), peer=endpoint),
                             remaining_s=remaining, attempt_timeout_s=self.attempt_timeout_s, peer=endpoint)

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, outputs: Sequence[str] | None = None,
                    version: str = "", request_id: str = "", session: str | None = None, tier: str | None = None,
                    parameters: Mapping[str, ParameterValue] | None = None,
                    timeout_s: float | None = None) -> InferResult:
        """Run ``model`` on ``inputs``; raises a FoglineError subclass on failure.

        ``session`` pins requests with the same key to the same device (affinity); ``tier`` asks an
        edge master for a tier (``device`` or ``cloud``; default ``auto``, its own choice);
        ``parameters`` are passed through.
        """
        params = dict(parameters or {})
        if session is not None:
            params[PARAM_SESSION] = session
        if tier is not None:
            params[PARAM_TIER] = tier
        request = encode_request(model, inputs, version=version, request_id=request_id, outputs=outputs,
                                 parameters=params)
        if not self.spans.enabled:
            return self._result(*await self._infer(request, timeout_s))
        with self.spans.span(INFER_SPAN, {"fogline.model": model}, kind=CLIENT) as span:
            reply, endpoint = await self._infer(request, timeout_s)
            result = self._result(reply, endpoint, span)
            _describe(span, result)
            return result

    async def _infer(self, request: pb.ModelInferRequest, timeout_s: float | None) -> tuple[pb.ModelInferResponse, str]:
        return await self._call(lambda stub, t, metadata: stub.ModelInfer(request, timeout=t, metadata=metadata),
                                timeout_s, traced=True)

    @staticmethod
    def _result(reply: pb.ModelInferResponse, endpoint: str, span: Span = NO_SPAN) -> InferResult:
        return InferResult(model=reply.model_name, version=reply.model_version, outputs=decode_outputs(reply),
                           parameters=decode_parameters(reply.parameters), endpoint=endpoint, id=reply.id,
                           trace_id=span.trace_id)

    async def model_metadata(self, model: str, version: str = "", *, timeout_s: float | None = None) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version)
        reply, _ = await self._call(
            lambda stub, t, metadata: stub.ModelMetadata(request, timeout=t, metadata=metadata), timeout_s)
        return ModelMetadata(
            name=reply.name, versions=list(reply.versions), platform=reply.platform,
            inputs=[TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in reply.inputs],
            outputs=[TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in reply.outputs],
        )

    async def model_ready(self, model: str, version: str = "", *, timeout_s: float | None = None) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        reply, _ = await self._call(
            lambda stub, t, metadata: stub.ModelReady(request, timeout=t, metadata=metadata), timeout_s)
        return reply.ready

    async def server_ready(self, *, timeout_s: float | None = None) -> bool:
        request = pb.ServerReadyRequest()
        reply, _ = await self._call(lambda stub, t, metadata: stub.ServerReady(request, timeout=t, metadata=metadata),
                                    timeout_s)
        return reply.ready

    async def server_live(self, *, timeout_s: float | None = None) -> bool:
        request = pb.ServerLiveRequest()
        reply, _ = await self._call(lambda stub, t, metadata: stub.ServerLive(request, timeout=t, metadata=metadata),
                                    timeout_s)
        return reply.live

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _describe(span: Span, result: InferResult) -> None:
    """What the answer says about where it ran, on the request's span."""
    where = {key: str(result.parameters[key]) for key in (PARAM_TIER, PARAM_NODE, PARAM_ROUTE)
             if key in result.parameters}
    succeeded(span, {"fogline.endpoint": result.endpoint, **where})


class SyncClient:
    """:class:`Client` for code without asyncio. Thread-safe: calls run on a private event loop thread."""

    def __init__(self, endpoints: str | Sequence[str], **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fogline-client", daemon=True)
        self._thread.start()
        self._client = self._run(self._make(endpoints, kwargs))

    @staticmethod
    async def _make(endpoints: str | Sequence[str], kwargs: dict[str, Any]) -> Client:
        return Client(endpoints, **kwargs)

    def _run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], **kwargs: Any) -> InferResult:
        return self._run(self._client.infer(model, inputs, **kwargs))

    def model_metadata(self, model: str, version: str = "", **kwargs: Any) -> ModelMetadata:
        return self._run(self._client.model_metadata(model, version, **kwargs))

    def model_ready(self, model: str, version: str = "", **kwargs: Any) -> bool:
        return self._run(self._client.model_ready(model, version, **kwargs))

    def server_ready(self, **kwargs: Any) -> bool:
        return self._run(self._client.server_ready(**kwargs))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
