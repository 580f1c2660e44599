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

With tracing on, each request is a ``fogline.route`` span saying where it ran and why (the
``fogline.tier``/``node``/``route``/``attempts`` of its answer), with a ``fogline.escalate`` span
around a cascade's call to the cloud; the dispatchers' attempts are their children.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from fogline.core.escalation.catalog import Catalog, CatalogEntry
from fogline.core.escalation.policy import CascadeVerdict, DeviceState, EscalationPolicy, resolve_cascade
from fogline.core.lifecycle.traffic import Choice, VersionTraffic
from fogline.core.observe.spans import PROCESS_SPANS, Attributes, Spans, in_span
from fogline.core.parameters import (
    ROUTE_CASCADE_HARD,
    ROUTE_DEGRADED,
    ROUTE_FAILOVER,
    ROUTE_OVERFLOW,
    TIER_AUTO,
    TIER_CLOUD,
    TIER_DEVICE,
)
from fogline.core.routing.dispatch import ROUTE_SPAN, Dispatched, Dispatcher, Upstream
from fogline.errors import (
    PEER_FAILURE_CODES,
    ErrorCode,
    FoglineError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    UnavailableError,
    echo_name,
    echo_names,
)

log = logging.getLogger(__name__)

CANARY_FAILURE_CODES = PEER_FAILURE_CODES | {ErrorCode.INTERNAL}
"""Failures of a canary that are not the client's fault: counted against the canary's gate, and the
request is retried on the stable version."""

R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)

ESCALATE_SPAN = "fogline.escalate"


class Messages(Protocol[R_contra]):
    """The operations on the protocol's messages the router needs: requests as bytes, responses as R."""

    def retarget(self, request: bytes, model: str) -> bytes:
        """``request`` addressed to ``model`` instead; OverloadedError if that makes it too large to send."""

    def probabilities(self, response: R_contra, output: str | None) -> np.ndarray:
        """The [N, K] class probabilities in ``response``'s output named ``output`` (None: its only one)."""

    def with_version(self, request: bytes, version: str) -> bytes:
        """``request`` asking for ``version`` of its model."""


@dataclass(frozen=True, kw_only=True)
class EdgeRoutingSettings:
    """When a device counts as over its queue limit, and how long a cascade waits for the cloud."""

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
    """Why it ran there: the ``fogline.route`` label, decided once per request."""
    attempts: int

    @property
    def degraded(self) -> bool:
        """The device answer of a cascade, returned because the cloud could not give its own."""
        return self.route == ROUTE_DEGRADED


class EdgeRouter(Generic[R]):
    """Runs requests on ``devices`` (the region's device nodes) or ``cloud`` (the GPU workers)."""

    def __init__(self, devices: Dispatcher[R], cloud: Dispatcher[R], messages: Messages[R], *,
                 catalog: Catalog | None = None, policy: EscalationPolicy | None = None,
                 settings: EdgeRoutingSettings = EdgeRoutingSettings(),
                 clock: Callable[[], float] = time.monotonic, traffic: VersionTraffic | None = None,
                 spans: Spans = PROCESS_SPANS) -> None:
        self.devices = devices
        self.cloud = cloud
        self.messages = messages
        self.catalog = catalog or Catalog()
        self.policy = policy or EscalationPolicy()
        self.settings = settings
        self._clock = clock
        self.traffic = traffic
        """The rollouts' version plans in force in this region (None: no model lifecycle)."""
        self._mirrors: set[asyncio.Task[None]] = set()
        self._spans = spans

    def entry(self, name: str) -> CatalogEntry:
        """The catalog entry of ``name``; ModelNotFoundError naming what is served if there is none."""
        entry = self.catalog.resolve(name, on_devices=self.devices.holds(name), in_cloud=self.cloud.holds(name))
        if entry is None:
            if self.devices.empty and self.cloud.empty:
                raise UnavailableError(f"no device node is registered in {self.devices.scope} and no GPU worker "
                                       f"is known; nothing can serve {echo_name(name)} yet")
            raise ModelNotFoundError(f"model {echo_name(name)} is not served in {self.devices.scope} or the cloud "
                                     f"tier; available: {echo_names(self.models())}")
        return entry

    def knows(self, name: str) -> bool:
        """Whether a client may ask for ``name`` here: a catalog name or a model some device or worker holds."""
        return name in self.catalog.entries or self.devices.holds(name) or self.cloud.holds(name)

    def models(self) -> list[str]:
        """Every name a client may ask for here."""
        return sorted({*self.devices.models(), *self.cloud.models(), *self.catalog.entries})

    def holders(self, name: str) -> list[tuple[str, Upstream[bytes, R]]]:
        """The upstreams that can describe ``name``, devices first and least loaded first, each with the
        name it knows the model by (the entry's device model on a device, its cloud model on a worker)."""
        entry = self.entry(name)
        found: list[tuple[str, Upstream[bytes, R]]] = []
        for tier in entry.tiers:
            model = entry.model_on(tier)
            found += [(model, upstream) for upstream in self._tier(tier).holders(model)]
        return found

    def infer(self, model: str, request: bytes, *, hint: str = TIER_AUTO, session: str | None = None,
              deadline: float | None = None, version: str = "") -> Coroutine[Any, Any, Routed[R]]:
        """Run ``request`` for ``model`` where the policy decides, and say where it ran and why. A
        ``version`` runs on a device holding it; without one, a rollout's plan picks the version."""
        # NOTE: a plain method returning the coroutine that routes: no coroutine of its own on the hot path.
        if self._spans.enabled:
            return self._traced_infer(model, request, hint, session, deadline, version)
        return self._route(model, request, hint, session, deadline, version)

    async def _traced_infer(self, model: str, request: bytes, hint: str, session: str | None,
                            deadline: float | None, version: str) -> Routed[R]:
        """:meth:`_route` in a ``fogline.route`` span with the answer's tier, node, route and attempts."""
        return await in_span(self._spans, ROUTE_SPAN, self._route(model, request, hint, session, deadline, version),
                             {"fogline.model": model, "fogline.hint": hint}, describe=_where)

    async def _route(self, model: str, request: bytes, hint: str, session: str | None, deadline: float | None,
                     version: str) -> Routed[R]:
        entry = self.entry(model)
        decision = self.policy.decide(entry, hint=hint, device_state=self._device_state(entry),
                                      cloud_reachable=self.cloud.reachable)
        if decision.tier == TIER_CLOUD:
            return await self._in_cloud(entry, request, decision.route, deadline)
        on_device = self._retarget(request, entry, decision.model)
        try:
            done, ran = await self._on_devices(entry, decision.model, on_device, session, deadline, version)
        except (UnavailableError, OverloadedError) as err:
            # Every device holding the model failed or was full: the cloud, if the request may go there.
            if hint == TIER_DEVICE or not self._cloud_takes(entry):
                raise
            route = ROUTE_OVERFLOW if isinstance(err, OverloadedError) else ROUTE_FAILOVER
            return await self._in_cloud(entry, request, route, deadline)
        if not decision.check_hardness:
            return _on_device(done, decision.model, decision.route)
        return await self._cascade(entry, request, done, decision.model, deadline, ran)

    async def _on_devices(self, entry: CatalogEntry, model: str, request: bytes, session: str | None,
                          deadline: float | None, version: str) -> tuple[Dispatched[R], str]:
        """Run ``request`` on a device: at ``version`` if the caller named one, else at the version the
        model's rollout plan picks (a canary's failure that is not the client's is retried on the stable
        version, within the deadline); the answer and the version asked for ("" for none)."""
        choice = None if version or self.traffic is None else self.traffic.choose(model)
        if choice is None:
            done = await self.devices.infer(model, request, session=session, deadline=deadline, version=version)
            return done, version
        assert self.traffic is not None
        if choice.canary and not self.devices.holds_version(model, choice.version):
            if choice.stable is None:  # a first install that no device has yet: as without a plan
                return await self.devices.infer(model, request, session=session, deadline=deadline), ""
            choice = Choice(choice.stable, canary=False, stable=choice.stable)
        if deadline is None:
            deadline = self._clock() + self.devices.settings.default_timeout_s
        started = self._clock()
        try:
            done = await self.devices.infer(model, self.messages.with_version(request, choice.version), session=session,
                                            deadline=deadline, version=choice.version)
        except FoglineError as err:
            if err.code not in CANARY_FAILURE_CODES or isinstance(err, PayloadTooLargeError):
                raise  # the client's fault: the same on any version
            self.traffic.record(model, choice.version, ok=False, latency_s=self._clock() - started)
            if not choice.canary or choice.stable is None:
                raise
            log.debug("canary %s v%s failed (%s); retrying on v%s", model, choice.version, err, choice.stable)
            return await self._on_stable(model, request, session, deadline, choice.stable), choice.stable
        self.traffic.record(model, choice.version, ok=True, latency_s=self._clock() - started)
        if choice.canary and choice.stable is not None and self.traffic.should_mirror(model):
            self._mirror(entry, model, request, done.response, choice.stable, deadline)
        return done, choice.version

    async def _on_stable(self, model: str, request: bytes, session: str | None, deadline: float,
                         stable: str) -> Dispatched[R]:
        assert self.traffic is not None
        started = self._clock()
        try:
            done = await self.devices.infer(model, self.messages.with_version(request, stable), session=session,
                                            deadline=deadline, version=stable)
        except FoglineError as err:
            if err.code in CANARY_FAILURE_CODES:
                self.traffic.record(model, stable, ok=False, latency_s=self._clock() - started)
            raise
        self.traffic.record(model, stable, ok=True, latency_s=self._clock() - started)
        return done

    def _mirror(self, entry: CatalogEntry, model: str, request: bytes, served: R, stable: str,
                deadline: float) -> None:
        """Run ``request`` on the ``stable`` version too, in the background, and count whether its
        argmax agrees with the canary's answer ``served`` (which is what the client gets)."""
        async def compare() -> None:
            try:
                done = await self.devices.infer(model, self.messages.with_version(request, stable),
                                                deadline=deadline, version=stable)
                output = entry.output if entry.device_model == model else None
                ours = self.messages.probabilities(served, output)
                theirs = self.messages.probabilities(done.response, output)
            except FoglineError as err:  # not a classifier, or the stable version failed: nothing to compare
                log.debug("mirror of %s on v%s: %s", model, stable, err)
                return
            if ours.shape != theirs.shape or ours.ndim == 0:
                return
            assert self.traffic is not None
            self.traffic.record_mirror(model, agreed=bool(np.array_equal(ours.argmax(axis=-1), theirs.argmax(axis=-1))))

        task = asyncio.ensure_future(compare())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _cascade(self, entry: CatalogEntry, request: bytes, done: Dispatched[R], model: str,
                       deadline: float | None, version: str = "") -> Routed[R]:
        """Keep the device answer ``done`` of ``model`` if it is easy; else the cloud's, or the device's degraded."""
        verdict = self._judge(entry, done.response, model)
        if self.traffic is not None and version:
            self.traffic.record_judged(model, version, escalated=verdict.escalate)
        if not verdict.escalate:
            return _on_device(done, model, verdict.route)
        ours = self._clock() + self.settings.escalation_timeout_s
        try:
            return await self._escalate(entry, request, ours if deadline is None else min(deadline, ours),
                                        done.attempts)
        except FoglineError as err:
            if err.code not in PEER_FAILURE_CODES:
                raise
            log.debug("cascade %r answered on the device: %s", entry.name, err)
            return _on_device(done, model, ROUTE_DEGRADED)

    async def _escalate(self, entry: CatalogEntry, request: bytes, deadline: float, earlier_attempts: int) -> Routed[R]:
        """A cascade's hard input, to the cloud (in a ``fogline.escalate`` span when tracing is on)."""
        if not self._spans.enabled:
            return await self._in_cloud(entry, request, ROUTE_CASCADE_HARD, deadline, earlier_attempts)
        return await in_span(self._spans, ESCALATE_SPAN,
                             self._in_cloud(entry, request, ROUTE_CASCADE_HARD, deadline, earlier_attempts),
                             {"fogline.model": entry.model_on(TIER_CLOUD)},
                             describe=lambda routed: {"fogline.node": routed.node})

    def _judge(self, entry: CatalogEntry, response: R, model: str) -> CascadeVerdict:
        """What becomes of a cascade's device answer (:func:`resolve_cascade`)."""
        try:
            probs = self.messages.probabilities(response, entry.output)
            return resolve_cascade(entry, probs, self.cloud.reachable)
        except InvalidInputError as err:  # the catalog names an output that is not probabilities
            raise InternalError(f"cascade {entry.name!r} cannot judge {model!r}'s answer: {err}") from None

    async def _in_cloud(self, entry: CatalogEntry, request: bytes, route: str, deadline: float | None,
                        earlier_attempts: int = 0) -> Routed[R]:
        model = entry.model_on(TIER_CLOUD)
        try:
            done = await self.cloud.infer(model, self._retarget(request, entry, model), deadline=deadline)
        except UnavailableError as err:
            raise UnavailableError(f"the cloud tier is unreachable; model {entry.name!r} was to run there "
                                   f"({route}): {err}") from None
        return Routed(done.response, model, TIER_CLOUD, done.endpoint, route, earlier_attempts + done.attempts)

    def _retarget(self, request: bytes, entry: CatalogEntry, model: str) -> bytes:
        return request if model == entry.name else self.messages.retarget(request, model)

    def _tier(self, tier: str) -> Dispatcher[R]:
        return self.cloud if tier == TIER_CLOUD else self.devices

    def _cloud_takes(self, entry: CatalogEntry) -> bool:
        """Whether a request for ``entry`` may go to the cloud now."""
        return bool(entry.cloud_model) and self.cloud.reachable(entry.cloud_model)

    def _device_state(self, entry: CatalogEntry) -> DeviceState:
        if entry.device_model is None:
            return DeviceState(healthy=0)
        usable = self.devices.usable(entry.device_model)
        if not usable and not self._cloud_takes(entry):
            # Every circuit is open and nothing else can serve: the dispatcher's limits decide.
            usable = self.devices.holding(entry.device_model)
        limit = self.settings.device_queue_limit
        return DeviceState(healthy=len(usable), overloaded=sum(e.outstanding >= limit for e in usable))

    @property
    def uplink_up(self) -> bool:
        """Some GPU worker's circuit takes calls."""
        return self.cloud.reachable()

    def status(self) -> dict[str, object]:
        return {"uplink": "up" if self.uplink_up else "down",
                "device_queue_limit": self.settings.device_queue_limit,
                "escalation_timeout_s": self.settings.escalation_timeout_s}


def _where(routed: Routed[Any]) -> Attributes:
    """What a ``fogline.route`` span says of where its request ran and why."""
    return {"fogline.tier": routed.tier, "fogline.node": routed.node, "fogline.route": routed.route,
            "fogline.attempts": routed.attempts, "fogline.ran": routed.model}


def _on_device(done: Dispatched[R], model: str, route: str) -> Routed[R]:
    return Routed(done.response, model, TIER_DEVICE, done.endpoint, route, done.attempts)
