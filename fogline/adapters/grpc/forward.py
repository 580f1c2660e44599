"""The V2 backends of the masters: route each request to an upstream and forward it as received.

- :class:`EdgeBackend`: an edge master's, over :class:`fogline.core.escalation.router.EdgeRouter` (devices of
  its region, GPU workers in the cloud).
- :class:`RegionalBackend`: the cloud master's global entry point, to the edge master of a region.

Each converts the request, asks the core and edits the answer's bytes (``fogline.adapters.grpc.wire``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from prometheus_client import Counter

from fogline._proto import inference_pb2 as pb
from fogline.adapters.grpc import wire
from fogline.adapters.grpc.codec import encode_parameters, string_parameter
from fogline.adapters.grpc.upstream import GrpcUpstream
from fogline.adapters.grpc.v2 import V2Backend
from fogline.adapters.metrics import Metrics
from fogline.core.escalation.router import EdgeRouter, Routed
from fogline.core.parameters import (
    PARAM_ATTEMPTS,
    PARAM_DEGRADED,
    PARAM_NODE,
    PARAM_REGION,
    PARAM_ROUTE,
    PARAM_SESSION,
    PARAM_TIER,
    TIER_AUTO,
)
from fogline.core.routing.dispatch import RegionalDispatch
from fogline.errors import FoglineError, ModelNotFoundError, UnavailableError, echo_name

METADATA_TIMEOUT_S = 5.0
MAX_CACHED_TAGS = 4096
"""Distinct ``fogline.*`` answer tags an edge master keeps encoded (they repeat: tier, node, route, attempts)."""
T = TypeVar("T")


Holders = list[tuple[str, GrpcUpstream]]
"""Upstreams that can describe a model, in the order to ask them, each with the name it knows it by."""


async def _first_answer(holders: Holders, call: Callable[[GrpcUpstream, str], Awaitable[T]], name: str) -> T:
    """Ask ``holders`` in turn until one answers; an UNAVAILABLE one is passed over, other errors are final."""
    last: FoglineError = UnavailableError("none is connected")
    for model, upstream in holders:
        try:
            return await call(upstream, model)
        except UnavailableError as err:
            last = err
    raise UnavailableError(f"no endpoint holding {echo_name(name)} answered: {last}")


async def _any_ready(holders: Holders, version: str) -> bool:
    for model, upstream in holders:
        try:
            if await upstream.model_ready(model, version, METADATA_TIMEOUT_S):
                return True
        except FoglineError:
            continue
    return False


async def _metadata(holders: Holders, name: str, version: str) -> pb.ModelMetadataResponse:
    return await _first_answer(holders, lambda u, model: u.model_metadata(model, version, METADATA_TIMEOUT_S), name)


class RouteTags:
    """Where a routed answer ran and why, said once: the ``fogline.*`` parameters appended to the answer
    and the route counted in the metrics, encoded and looked up once per distinct label."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        self._tags: dict[tuple[str, str, str, int, str], tuple[bytes, Counter | None]] = {}

    def tag(self, routed: Routed[bytes], model: str) -> bytes:
        """The parameters saying where ``routed`` ran and why; counts its route for ``model`` (the name
        asked for: a cascade's own)."""
        key = (routed.tier, routed.node, routed.route, routed.attempts, model)
        found = self._tags.get(key)
        if found is None:
            found = self._encode(routed, model)
            if len(self._tags) < MAX_CACHED_TAGS:
                self._tags[key] = found
        encoded, counter = found
        if counter is not None:
            counter.inc()
        return encoded

    def _encode(self, routed: Routed[bytes], model: str) -> tuple[bytes, Counter | None]:
        values: dict[str, bool | int | str] = {PARAM_TIER: routed.tier, PARAM_NODE: routed.node,
                                               PARAM_ROUTE: routed.route, PARAM_ATTEMPTS: routed.attempts}
        if routed.degraded:
            values[PARAM_DEGRADED] = True
        counter = self._metrics.route_counter(routed.tier, routed.route, model) if self._metrics is not None else None
        return encode_parameters(values), counter


class EdgeBackend(V2Backend):
    """An edge master's V2 service: each request runs where :class:`EdgeRouter` decides; the upstream's
    answer goes back untouched but for the caller's id, the model name it asked for, and the tags
    saying where it ran and why (:class:`RouteTags`, counted in ``metrics``)."""

    def __init__(self, router: EdgeRouter[bytes], *, name: str, ready: Callable[[], bool],
                 metrics: Metrics | None = None) -> None:
        self.router = router
        self.name = name
        self._ready = ready
        self._tags = RouteTags(metrics)

    def ready(self) -> bool:
        return self._ready()

    def known_model(self, name: str) -> bool:
        return self.router.knows(name)

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        hint = string_parameter(request.parameters, PARAM_TIER)
        routed = await self.router.infer(request.model_name, data, hint=TIER_AUTO if hint is None else hint,
                                         session=string_parameter(request.parameters, PARAM_SESSION),
                                         deadline=deadline, version=request.model_version)
        # A catalog name is answered as the model the caller asked for.
        renamed = request.model_name if routed.model != request.model_name else None
        tags = self._tags.tag(routed, request.model_name)
        return wire.with_id(routed.response, request.id, model_name=renamed, parameters=tags)

    def _holders(self, name: str) -> Holders:
        return cast(Holders, self.router.holders(name))  # the edge master's upstreams are GrpcUpstreams

    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        reply = await _metadata(self._holders(name), name, version)
        reply.name = name  # a catalog name: described as the model it stands for
        return reply

    async def model_ready(self, name: str, version: str) -> bool:
        try:
            return await _any_ready(self._holders(name), version)
        except (ModelNotFoundError, UnavailableError):
            return False


class RegionalBackend(V2Backend):
    """The cloud master's V2 entry point: forwards to an edge master, of the region named by the
    request's ``fogline.region`` if any, else of any region holding the model.

    The edge's answer already says where it ran (``fogline.tier``/``node``/``route``): those are
    kept, and only ``fogline.region`` is added, by appending its encoding (protobuf merges map
    fields across concatenated messages).
    """

    def __init__(self, routing: RegionalDispatch[bytes], *, name: str, ready: Callable[[], bool]) -> None:
        self.routing = routing
        self.name = name
        self._ready = ready
        self._region_tags: dict[str, bytes] = {}

    def ready(self) -> bool:
        return self._ready()

    def known_model(self, name: str) -> bool:
        return self.routing.knows(name)

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        done, served_in = await self.routing.infer(
            request.model_name, data, region=string_parameter(request.parameters, PARAM_REGION),
            session=string_parameter(request.parameters, PARAM_SESSION), deadline=deadline)
        # The caller's id goes back in (an upstream stream re-tags requests), then the region.
        return wire.with_id(done.response, request.id, parameters=self._region_tag(served_in))

    def _region_tag(self, region: str) -> bytes:
        tag = self._region_tags.get(region)
        if tag is None:
            tag = self._region_tags[region] = encode_parameters({PARAM_REGION: region})
        return tag

    def _holders(self, name: str) -> Holders:
        """The edge masters holding ``name``, least loaded first; NOT_FOUND naming what is served."""
        return [(name, cast(GrpcUpstream, u)) for u in self.routing.holders(name)]

    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        return await _metadata(self._holders(name), name, version)

    async def model_ready(self, name: str, version: str) -> bool:
        try:
            return await _any_ready(self._holders(name), version)
        except ModelNotFoundError:
            return False
