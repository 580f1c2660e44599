"""The V2 backends of the masters: route each request to an upstream and forward it as received.

- :class:`EdgeBackend`: an edge master's, over :class:`fogline.core.escalation.router.EdgeRouter` (devices of
  its region, GPU workers in the cloud).
- :class:`RegionalBackend`: the cloud master's global entry point, to the edge master of a region.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
from google.protobuf.message import DecodeError

from fogline._proto import inference_pb2 as pb
from fogline.adapters.grpc.codec import decode_raw, decode_typed, set_parameters, string_parameter
from fogline.adapters.grpc.upstream import GrpcUpstream
from fogline.adapters.grpc.v2 import V2Backend
from fogline.adapters.grpc.wire import length_delimited
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
    TIER_CLOUD,
)
from fogline.core.routing.dispatch import RegionalDispatch
from fogline.errors import (
    FoglineError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    PayloadTooLargeError,
    UnavailableError,
    echo_name,
    echo_names,
)

METADATA_TIMEOUT_S = 5.0
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


class V2Wire:
    """``fogline.core.escalation.router.Wire`` for V2 messages as bytes; upstreams accept ``max_message_bytes``."""

    def __init__(self, *, max_message_bytes: int | None = None) -> None:
        self.max_message_bytes = max_message_bytes

    def retarget(self, request: bytes, model: str) -> bytes:
        """``request`` for ``model`` (ModelInferRequest.model_name: the last wins); PayloadTooLargeError if
        the new name takes it over the upstreams' message limit, before any upstream sees it."""
        out = request + length_delimited(1, model.encode())
        if self.max_message_bytes is not None and len(out) > self.max_message_bytes:
            raise PayloadTooLargeError(f"the request is {len(request)} bytes, {len(out)} once addressed to the "
                                       f"model {model!r} that serves it, over the {self.max_message_bytes}-byte "
                                       f"message limit; send a smaller batch")
        return out

    @staticmethod
    def probabilities(response: bytes, output: str | None) -> np.ndarray:
        try:
            msg = pb.ModelInferResponse.FromString(response)
        except DecodeError:
            raise InternalError("an upstream answered with a malformed ModelInferResponse") from None
        names = [t.name for t in msg.outputs]
        if output is None and len(names) != 1:
            raise InvalidInputError(f"model {msg.model_name!r} has outputs {names}: the catalog entry must name "
                                    f"the one holding class probabilities (output = ...)")
        index = 0 if output is None else names.index(output) if output in names else -1
        if index < 0:
            raise InvalidInputError(f"model {msg.model_name!r} has no output {output!r}; its outputs are {names}")
        tensor = msg.outputs[index]
        if msg.raw_output_contents:
            return decode_raw(tensor.name, tensor.datatype, tensor.shape, msg.raw_output_contents[index])
        return decode_typed(tensor.name, tensor.datatype, tensor.shape, tensor.contents)


class EdgeBackend(V2Backend):
    """An edge master's V2 service: each request runs where :class:`EdgeRouter` decides; the upstream's
    answer goes back untouched but for the caller's id, the model name it asked for, and the tags
    saying where it ran and why."""

    def __init__(self, router: EdgeRouter[bytes], *, name: str, ready: Callable[[], bool],
                 on_routed: Callable[[Routed[bytes]], None] | None = None) -> None:
        self.router = router
        self.name = name
        self._ready = ready
        self._on_routed = on_routed
        self._tags: dict[tuple[str, str, str, int, bool], bytes] = {}

    def ready(self) -> bool:
        return self._ready()

    def known_model(self, name: str) -> bool:
        return name in self.router.catalog.entries or bool(
            self.router.devices.pool.for_model(name) or self.router.cloud.pool.for_model(name))

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        params = request.parameters
        hint = string_parameter(params, PARAM_TIER)
        session = string_parameter(params, PARAM_SESSION)
        routed = await self.router.infer(request.model_name, data, hint=TIER_AUTO if hint is None else hint,
                                         session=session, deadline=deadline)
        if self._on_routed is not None:
            self._on_routed(routed)
        out = routed.response + length_delimited(3, request.id.encode())
        if routed.model != request.model_name:  # a catalog name: answer as the model the caller asked for
            out += length_delimited(1, request.model_name.encode())
        return out + self._tag(routed)

    def _tag(self, routed: Routed[bytes]) -> bytes:
        key = (routed.tier, routed.node, routed.route, routed.attempts, routed.degraded)
        tag = self._tags.get(key)
        if tag is None:
            values: dict[str, bool | int | str] = {PARAM_TIER: routed.tier, PARAM_NODE: routed.node,
                                                   PARAM_ROUTE: routed.route, PARAM_ATTEMPTS: routed.attempts}
            if routed.degraded:
                values[PARAM_DEGRADED] = True
            msg = pb.ModelInferResponse()
            set_parameters(msg.parameters, values)
            tag = msg.SerializeToString()
            if len(self._tags) < 4096:
                self._tags[key] = tag
        return tag

    def _holders(self, name: str) -> Holders:
        """The upstreams that can describe ``name`` (devices first, least loaded first), each with the
        name it knows the model by: the catalog entry's device model on a device, cloud model on a worker."""
        entry = self.router.entry(name)
        found: Holders = []
        for tier in entry.tiers:
            model = entry.model_on(tier)
            dispatcher = self.router.cloud if tier == TIER_CLOUD else self.router.devices
            endpoints = sorted(dispatcher.pool.for_model(model), key=lambda e: e.load())
            found += [(model, e.upstream) for e in endpoints]  # type: ignore[misc]
        return found

    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        reply = await _first_answer(self._holders(name),
                                    lambda u, model: u.model_metadata(model, version, METADATA_TIMEOUT_S), name)
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
        return bool(self.routing.any.pool.for_model(name))

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        params = request.parameters
        region = string_parameter(params, PARAM_REGION)
        session = string_parameter(params, PARAM_SESSION)
        dispatcher = self.routing.dispatcher(region)
        done = await dispatcher.infer(request.model_name, data, session=session, deadline=deadline)
        endpoint = dispatcher.pool.endpoints.get(done.endpoint)
        served_in = endpoint.state.member.region if endpoint is not None else region or ""
        # The caller's id goes back in (an upstream stream re-tags requests), then the region.
        return done.response + length_delimited(3, request.id.encode()) + self._region_tag(served_in)

    def _region_tag(self, region: str) -> bytes:
        tag = self._region_tags.get(region)
        if tag is None:
            msg = pb.ModelInferResponse()
            set_parameters(msg.parameters, {PARAM_REGION: region})
            tag = self._region_tags[region] = msg.SerializeToString()
        return tag

    def _holders(self, name: str) -> Holders:
        """The edge masters holding ``name``, least loaded first; NOT_FOUND naming what is served."""
        pool = self.routing.any.pool
        endpoints = pool.for_model(name)
        if not endpoints:
            raise ModelNotFoundError(f"model {echo_name(name)} is not served in any region; "
                                     f"available: {echo_names(pool.models())}")
        return [(name, e.upstream) for e in sorted(endpoints, key=lambda e: e.load())]  # type: ignore[misc]

    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        return await _first_answer(self._holders(name),
                                   lambda u, model: u.model_metadata(model, version, METADATA_TIMEOUT_S), name)

    async def model_ready(self, name: str, version: str) -> bool:
        try:
            return await _any_ready(self._holders(name), version)
        except ModelNotFoundError:
            return False
