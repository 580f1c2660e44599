"""The edge master's escalation policy (DESIGN.md §2): where a request runs first, and what becomes of
a cascade's device answer. Pure domain logic: no I/O, no protocol imports. Per request::

    decision = policy.decide(entry, hint=tier, device_state=state, cloud_reachable=reachable)
    # run decision.model on decision.tier, then, for a cascade:
    if decision.check_hardness:
        escalate, route = resolve_cascade(entry, probs, cloud_reachable=reachable)

``cloud_reachable`` is a :class:`CloudReachability`: asked about a cloud model only where the answer
changes the outcome (``fogline.core.escalation.router`` passes the cloud dispatcher's ``reachable``,
which asks the GPU workers' circuit breakers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, NoReturn, Protocol

import numpy as np

from fogline.core.escalation.catalog import CatalogEntry, Placement
from fogline.core.parameters import (
    PARAM_TIER,
    ROUTE_CASCADE_EASY,
    ROUTE_CASCADE_HARD,
    ROUTE_DEGRADED,
    ROUTE_FAILOVER,
    ROUTE_HINT,
    ROUTE_OVERFLOW,
    ROUTE_PLACEMENT,
    TIER_AUTO,
    TIER_CLOUD,
    TIER_DEVICE,
    TIERS,
)
from fogline.errors import InvalidInputError, OverloadedError, UnavailableError, echo_name


class CloudReachability(Protocol):
    """Whether a request for a cloud model may go to the cloud now."""

    def __call__(self, model: str, /) -> bool:
        """True while some GPU worker holding ``model`` can take a call."""


@dataclass(frozen=True, kw_only=True)
class DeviceState:
    """The edge master's view now of the device nodes holding one model."""

    healthy: int
    """Device nodes holding the model whose circuit is closed and that are not ejected."""
    overloaded: int = 0
    """How many of the healthy ones are over their queue limit."""

    def __post_init__(self) -> None:
        if not 0 <= self.overloaded <= self.healthy:
            raise ValueError(f"need 0 <= overloaded <= healthy, got healthy={self.healthy} "
                             f"overloaded={self.overloaded}")

    @property
    def any_healthy(self) -> bool:
        return self.healthy > 0

    @property
    def all_overloaded(self) -> bool:
        return self.healthy > 0 and self.overloaded == self.healthy


@dataclass(frozen=True, kw_only=True)
class Decision:
    """Where to send a request first, and why."""

    tier: str
    """``device`` or ``cloud``."""
    model: str
    """The model to run on that tier."""
    route: str
    """The ``fogline.route`` label; for a cascade on a device, resolve_cascade gives the final one."""
    check_hardness: bool = False
    """A cascade: pass the device answer to resolve_cascade."""


class CascadeVerdict(NamedTuple):
    """What to do with a cascade's device answer: unpacks as ``escalate, route``."""

    escalate: bool
    """Send the input to the cloud model and return its answer."""
    route: str

    @property
    def degraded(self) -> bool:
        """The device answer is returned only because the cloud is unreachable (``fogline.degraded``)."""
        return self.route == ROUTE_DEGRADED


@dataclass(frozen=True, kw_only=True)
class PolicySettings:
    """What the policy tells a caller it refuses."""

    overload_retry_after_s: float = 0.5
    """Retry hint in the RESOURCE_EXHAUSTED error when every device holding the model is over its
    queue limit and the cloud cannot take the request."""


def _check_hint(entry: CatalogEntry, hint: str) -> None:
    if hint not in TIERS:
        raise InvalidInputError(f"parameter {PARAM_TIER!r} must be one of {', '.join(map(repr, TIERS))}; "
                                f"got {echo_name(hint) if isinstance(hint, str) else repr(hint)}")
    if hint != TIER_AUTO and hint not in entry.tiers:
        only = entry.tiers[0]
        raise InvalidInputError(f"model {entry.name!r} cannot run on the {hint} tier, only on the {only} tier; "
                                f"send {PARAM_TIER} 'auto' or {only!r}")


class EscalationPolicy:
    """The edge master's decision in DESIGN.md §2's order: hint, placement, device health, device load.
    Raises InvalidInputError for a bad hint, UnavailableError or OverloadedError when no tier can
    take the request."""

    def __init__(self, settings: PolicySettings = PolicySettings()) -> None:
        self.settings = settings

    def decide(self, entry: CatalogEntry, *, hint: str = TIER_AUTO, device_state: DeviceState,
               cloud_reachable: CloudReachability) -> Decision:
        """The first tier to try for a request to ``entry``. A device that then fails can be treated
        by deciding again with ``DeviceState(healthy=0)``."""
        _check_hint(entry, hint)
        if hint == TIER_DEVICE:
            return self._on_device(entry, device_state, ROUTE_HINT, f"and {PARAM_TIER} 'device' rules out the cloud")
        if hint == TIER_CLOUD:
            return _in_cloud(entry, ROUTE_HINT, cloud_reachable)
        if entry.placement is Placement.CLOUD:
            return _in_cloud(entry, ROUTE_PLACEMENT, cloud_reachable)
        if entry.cloud_model and not _device_can_take(device_state) and cloud_reachable(entry.cloud_model):
            route = ROUTE_OVERFLOW if device_state.any_healthy else ROUTE_FAILOVER
            return Decision(tier=TIER_CLOUD, model=entry.model_on(TIER_CLOUD), route=route)
        why = "and the cloud tier is unreachable" if entry.cloud_model else "and it has no cloud variant"
        return self._on_device(entry, device_state, ROUTE_PLACEMENT, why)

    def _on_device(self, entry: CatalogEntry, state: DeviceState, route: str, why_not_cloud: str) -> Decision:
        if not _device_can_take(state):
            self._refuse(entry, state, why_not_cloud)
        return Decision(tier=TIER_DEVICE, model=entry.model_on(TIER_DEVICE), route=route,
                        check_hardness=route == ROUTE_PLACEMENT and entry.placement is Placement.CASCADE)

    def _refuse(self, entry: CatalogEntry, state: DeviceState, why_not_cloud: str) -> NoReturn:
        if not state.any_healthy:
            raise UnavailableError(f"no healthy device node holds model {entry.name!r}, {why_not_cloud}")
        retry_s = self.settings.overload_retry_after_s
        raise OverloadedError(f"all {state.healthy} healthy device nodes holding model {entry.name!r} are over "
                              f"their queue limit, {why_not_cloud}; retry after {retry_s:g} s",
                              retry_after_s=retry_s)


def _device_can_take(state: DeviceState) -> bool:
    return state.any_healthy and not state.all_overloaded


def _in_cloud(entry: CatalogEntry, route: str, cloud_reachable: CloudReachability) -> Decision:
    if not cloud_reachable(entry.model_on(TIER_CLOUD)):
        why = "it runs only in the cloud" if route == ROUTE_PLACEMENT else f"{PARAM_TIER} 'cloud' was asked for"
        raise UnavailableError(f"the cloud tier is unreachable; model {entry.name!r} cannot be served ({why})")
    return Decision(tier=TIER_CLOUD, model=entry.model_on(TIER_CLOUD), route=route)


def resolve_cascade(entry: CatalogEntry, device_probs: np.ndarray,
                    cloud_reachable: CloudReachability) -> CascadeVerdict:
    """After a cascade's device answer: keep it (``cascade-easy``), escalate it (``cascade-hard``), or
    keep it flagged because the cloud is unreachable (``degraded``). A request is hard when any of
    its rows is, a row with a NaN or an infinity included, and then goes to the cloud whole, so that one
    response comes from one tier."""
    if entry.rule is None:
        raise ValueError(f"model {entry.name!r} is not a cascade (placement {entry.placement.value!r})")
    if not entry.rule.is_hard(device_probs).any():
        return CascadeVerdict(False, ROUTE_CASCADE_EASY)
    if cloud_reachable(entry.model_on(TIER_CLOUD)):
        return CascadeVerdict(True, ROUTE_CASCADE_HARD)
    return CascadeVerdict(False, ROUTE_DEGRADED)


