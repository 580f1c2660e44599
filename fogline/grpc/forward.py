"""The V2 backend of a master: route each request to an upstream and forward it as received."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fogline._proto import inference_pb2 as pb
from fogline.dispatch import Dispatcher, RegionalDispatch
from fogline.errors import FoglineError, ModelNotFoundError, UnavailableError
from fogline.grpc.codec import set_parameters
from fogline.grpc.upstream import GrpcUpstream
from fogline.grpc.v2 import V2Backend
from fogline.grpc.wire import length_delimited
from fogline.types import (
    PARAM_ATTEMPTS,
    PARAM_NODE,
    PARAM_REGION,
    PARAM_ROUTE,
    PARAM_SESSION,
    PARAM_TIER,
    ROUTE_PLACEMENT,
)

METADATA_TIMEOUT_S = 5.0
T = TypeVar("T")


class ForwardingBackend(V2Backend):
    """Serves V2 by dispatching over a pool of :class:`GrpcUpstream` s.

    The response bytes of the upstream are returned untouched with the routing parameters
    appended: protobuf merges a repeated/map field across concatenated encodings, so
    ``response + encoded(parameters)`` is the response with those parameters added.
    """

    def __init__(self, dispatcher: Dispatcher[bytes], *, name: str, tier: str,
                 ready: Callable[[], bool]) -> None:
        self.dispatcher = dispatcher
        self.name = name
        self.tier = tier
        self._ready = ready
        self._suffixes: dict[tuple[str, str, int], bytes] = {}

    def ready(self) -> bool:
        return self._ready()

    def known_model(self, name: str) -> bool:
        return bool(self.dispatcher.pool.for_model(name))

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        params = request.parameters
        session = params[PARAM_SESSION].string_param if PARAM_SESSION in params else None
        done = await self.dispatcher.infer(request.model_name, data, session=session, deadline=deadline)
        # The caller's id goes back in (an upstream stream re-tags requests), then the routing tags.
        return done.response + length_delimited(3, request.id.encode()) + self._suffix(
            done.endpoint, ROUTE_PLACEMENT, done.attempts)

    def _suffix(self, node: str, route: str, attempts: int) -> bytes:
        key = (node, route, attempts)
        suffix = self._suffixes.get(key)
        if suffix is None:
            msg = pb.ModelInferResponse()
            set_parameters(msg.parameters, {PARAM_TIER: self.tier, PARAM_NODE: node, PARAM_ROUTE: route,
                                            PARAM_ATTEMPTS: attempts})
            suffix = msg.SerializeToString()
            if len(self._suffixes) < 4096:
                self._suffixes[key] = suffix
        return suffix

    async def _ask(self, name: str, call: Callable[[GrpcUpstream], Awaitable[T]]) -> T:
        """Ask the endpoints holding ``name`` in turn until one answers."""
        endpoints = self.dispatcher.pool.for_model(name)
        if not endpoints:
            raise ModelNotFoundError(
                f"model {name!r} is not served in {self.dispatcher.scope}; "
                f"available: {self.dispatcher.pool.models()}")
        last: FoglineError | None = None
        for endpoint in sorted(endpoints, key=lambda e: e.load()):
            try:
                return await call(endpoint.upstream)  # type: ignore[arg-type]
            except FoglineError as err:
                last = err
                if not isinstance(err, UnavailableError):
                    raise
        raise UnavailableError(f"no endpoint holding {name!r} answered: {last}")

    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        return await self._ask(name, lambda u: u.model_metadata(name, version, METADATA_TIMEOUT_S))

    async def model_ready(self, name: str, version: str) -> bool:
        if not self.dispatcher.pool.for_model(name):
            return False
        try:
            return await self._ask(name, lambda u: u.model_ready(name, version, METADATA_TIMEOUT_S))
        except FoglineError:
            return False


class RegionalBackend(ForwardingBackend):
    """The cloud master's V2 entry point: forwards to an edge master, of the region named by the
    request's ``fogline.region`` if any, else of any region holding the model.

    The edge's answer already says where it ran (``fogline.tier``/``node``/``route``): those are
    kept, and only ``fogline.region`` is added.
    """

    def __init__(self, routing: RegionalDispatch[bytes], *, name: str, ready: Callable[[], bool]) -> None:
        super().__init__(routing.any, name=name, tier="", ready=ready)
        self.routing = routing
        self._region_tags: dict[str, bytes] = {}

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        params = request.parameters
        region = params[PARAM_REGION].string_param if PARAM_REGION in params else None
        session = params[PARAM_SESSION].string_param if PARAM_SESSION in params else None
        dispatcher = self.routing.dispatcher(region)
        done = await dispatcher.infer(request.model_name, data, session=session, deadline=deadline)
        endpoint = dispatcher.pool.endpoints.get(done.endpoint)
        served_in = endpoint.state.member.region if endpoint is not None else region or ""
        return done.response + length_delimited(3, request.id.encode()) + self._region_tag(served_in)

    def _region_tag(self, region: str) -> bytes:
        tag = self._region_tags.get(region)
        if tag is None:
            msg = pb.ModelInferResponse()
            set_parameters(msg.parameters, {PARAM_REGION: region})
            tag = self._region_tags[region] = msg.SerializeToString()
        return tag
