"""Where an edge master runs each request: on a device node of its region or on a cloud GPU worker.

DESIGN.md §2 in order: the request's hint, the model's placement in the catalog, device health,
device load (overflow), failover when no device can serve, and the cascade — the small model on a
device, the large one in the cloud for the inputs the catalog's rule finds hard. The decisions are
:class:`fogline.core.escalation.policy.EscalationPolicy`'s; this module carries them out over two dispatchers
and says in every answer where it ran and why.

The cloud is never waited on when it cannot answer: while the circuit of every GPU worker holding
the model is open, a cascade returns the device answer at once (``degraded``) and a cloud-only
model fails at once with UNAVAILABLE; a hard input waits for the cloud at most
``escalation_timeout_s``. A half-open circuit lets a probe through on a request that really goes
to the cloud: easy cascade inputs never spend it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

import numpy as np

from fogline.core.escalation.catalog import Catalog, CatalogEntry
from fogline.core.escalation.policy import DeviceState, EscalationPolicy, resolve_cascade
from fogline.core.parameters import (
    ROUTE_CASCADE_HARD,
    ROUTE_DEGRADED,
    ROUTE_FAILOVER,
    ROUTE_OVERFLOW,
    TIER_AUTO,
    TIER_CLOUD,
    TIER_DEVICE,
)
from fogline.core.routing.dispatch import Dispatcher
from fogline.errors import (
    PEER_FAILURE_CODES,
    FoglineError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
    echo_name,
    echo_names,
)

log = logging.getLogger(__name__)

R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)


class Wire(Protocol[R_contra]):
    """The two things the router needs to know of the protocol's messages."""

    def retarget(self, request: bytes, model: str) -> bytes:
        """``request`` addressed to ``model`` instead; OverloadedError if that makes it too large to send."""

    def probabilities(self, response: R_contra, output: str | None) -> np.ndarray:
        """The [N, K] class probabilities in ``response``'s output named ``output`` (None: its only one)."""


@dataclass(frozen=True, kw_only=True)
class EdgeRoutingSettings:
    device_queue_limit: int = 128
    """Requests of ours outstanding at one device node beyond which it counts as over its queue limit;
    when every healthy device holding a model is, its requests overflow to the cloud (if it has a
    cloud variant) or get RESOURCE_EXHAUSTED."""
    escalation_timeout_s: float = 2.0
    """The longest a cascade waits for the cloud's answer to a hard input before it returns the
    device answer, degraded."""

    def __post_init__(self) -> None:
        if self.device_queue_limit < 1 or self.escalation_timeout_s <= 0:
            raise ValueError(f"need device_queue_limit >= 1 and escalation_timeout_s > 0, got {self}")


@dataclass(frozen=True, slots=True)
class Routed(Generic[R]):
    """An answer and where it came from, for the ``fogline.*`` response parameters."""

    response: R
    model: str
    """The model that produced it (the catalog's device or cloud model)."""
    tier: str
    node: str
    route: str
    attempts: int
    degraded: bool = False


class EdgeRouter(Generic[R]):
    """Runs requests on ``devices`` (the region's device nodes) or ``cloud`` (the GPU workers)."""

    def __init__(self, devices: Dispatcher[R], cloud: Dispatcher[R], wire: Wire[R], *,
                 catalog: Catalog | None = None, policy: EscalationPolicy | None = None,
                 settings: EdgeRoutingSettings = EdgeRoutingSettings(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.devices = devices
        self.cloud = cloud
        self.wire = wire
        self.catalog = catalog or Catalog()
        self.policy = policy or EscalationPolicy()
        self.settings = settings
        self._clock = clock

    def entry(self, name: str) -> CatalogEntry:
        """The catalog entry of ``name``; ModelNotFoundError naming what is served if there is none."""
        entry = self.catalog.resolve(name, on_devices=bool(self.devices.pool.for_model(name)),
                                     in_cloud=bool(self.cloud.pool.for_model(name)))
        if entry is None:
            if not (self.devices.pool.endpoints or self.cloud.pool.endpoints):
                raise UnavailableError(f"no device node is registered in {self.devices.scope} and no GPU worker "
                                       f"is known; nothing can serve {echo_name(name)} yet")
            raise ModelNotFoundError(f"model {echo_name(name)} is not served in {self.devices.scope} or the cloud "
                                     f"tier; available: {echo_names(self.models())}")
        return entry

    def models(self) -> list[str]:
        """Every name a client may ask for here."""
        return sorted({*self.devices.pool.models(), *self.cloud.pool.models(), *self.catalog.entries})

    async def infer(self, model: str, request: bytes, *, hint: str = TIER_AUTO, session: str | None = None,
                    deadline: float | None = None) -> Routed[R]:
        entry = self.entry(model)
        reachable = self._cloud_reachable(entry)
        decision = self.policy.decide(entry, hint=hint, device_state=self._device_state(entry),
                                      cloud_reachable=reachable)
        if decision.tier == TIER_CLOUD:
            return await self._in_cloud(entry, request, decision.route, deadline)
        on_device = self._retarget(request, entry, decision.model)
        try:
            done = await self.devices.infer(decision.model, on_device, session=session, deadline=deadline)
        except (UnavailableError, OverloadedError) as err:
            # Every device holding the model failed or was full: the cloud, if the request may go there.
            if hint == TIER_DEVICE or not entry.cloud_model or not reachable():
                raise
            route = ROUTE_OVERFLOW if isinstance(err, OverloadedError) else ROUTE_FAILOVER
            return await self._in_cloud(entry, request, route, deadline)
        answer = Routed(done.response, decision.model, TIER_DEVICE, done.endpoint, decision.route, done.attempts)
        if not decision.check_hardness:
            return answer
        return await self._cascade(entry, request, answer, reachable, deadline)

    async def _cascade(self, entry: CatalogEntry, request: bytes, answer: Routed[R],
                       reachable: Callable[[], bool], deadline: float | None) -> Routed[R]:
        """Keep the device ``answer`` if it is easy; else the cloud's, or the device's degraded."""
        try:
            probs = self.wire.probabilities(answer.response, entry.output)
            verdict = resolve_cascade(entry, probs, reachable)
        except InvalidInputError as err:  # the catalog names an output that is not probabilities
            raise InternalError(f"cascade {entry.name!r} cannot judge {answer.model!r}'s answer: {err}") from None
        if not verdict.escalate:
            return replace(answer, route=verdict.route, degraded=verdict.degraded)
        ours = self._clock() + self.settings.escalation_timeout_s
        try:
            cloud = await self._in_cloud(entry, request, ROUTE_CASCADE_HARD,
                                         ours if deadline is None else min(deadline, ours))
        except FoglineError as err:
            if err.code not in PEER_FAILURE_CODES:
                raise
            log.debug("cascade %r answered on the device: %s", entry.name, err)
            return replace(answer, route=ROUTE_DEGRADED, degraded=True)
        return replace(cloud, attempts=cloud.attempts + answer.attempts)

    async def _in_cloud(self, entry: CatalogEntry, request: bytes, route: str, deadline: float | None) -> Routed[R]:
        model = entry.model_on(TIER_CLOUD)
        try:
            done = await self.cloud.infer(model, self._retarget(request, entry, model), deadline=deadline)
        except UnavailableError as err:
            raise UnavailableError(f"the cloud tier is unreachable; model {entry.name!r} was to run there "
                                   f"({route}): {err}") from None
        return Routed(done.response, model, TIER_CLOUD, done.endpoint, route, done.attempts)

    def _retarget(self, request: bytes, entry: CatalogEntry, model: str) -> bytes:
        return request if model == entry.name else self.wire.retarget(request, model)

    def _cloud_reachable(self, entry: CatalogEntry) -> Callable[[], bool]:
        """Whether a request for ``entry`` may go to the cloud now: a GPU worker holding its cloud model
        has a circuit that takes calls (closed, or half-open with a probe slot free)."""
        return lambda: self._cloud_may_help(entry)

    def _device_state(self, entry: CatalogEntry) -> DeviceState:
        if entry.device_model is None:
            return DeviceState(healthy=0)
        endpoints = self.devices.pool.for_model(entry.device_model)
        limit = self.settings.device_queue_limit
        usable = [e for e in endpoints if e.breaker.closed or e.breaker.accepting]
        if not usable and not self._cloud_may_help(entry):
            usable = endpoints  # every circuit is open and nothing else can serve: the dispatcher's limits decide
        return DeviceState(healthy=len(usable), overloaded=sum(e.outstanding >= limit for e in usable))

    def _cloud_may_help(self, entry: CatalogEntry) -> bool:
        model = entry.cloud_model
        return bool(model) and any(e.breaker.closed or e.breaker.accepting for e in self.cloud.pool.for_model(model))  # type: ignore[arg-type]

    @property
    def uplink_up(self) -> bool:
        """Some GPU worker's circuit takes calls."""
        return any(e.breaker.accepting for e in self.cloud.pool.endpoints.values())

    def status(self) -> dict[str, object]:
        return {"uplink": "up" if self.uplink_up else "down",
                "device_queue_limit": self.settings.device_queue_limit,
                "escalation_timeout_s": self.settings.escalation_timeout_s}
