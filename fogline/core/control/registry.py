"""Membership: who serves what, with what load. The embedded registry a master holds for its children.

Children register, heartbeat their load, and deregister when they drain; one that misses
heartbeats for ``ttl_s`` is dropped by :meth:`EmbeddedRegistry.expire`. Members learned from an
external registry (Consul) are set wholesale per service with :meth:`EmbeddedRegistry.sync_service`
and are not expired here: their registry's health checks decide. Watchers are called after every
change of membership (not on plain load updates, which they read from the states).

A child joins through :meth:`EmbeddedRegistry.admit`, which holds the rules of who may join this
scope (an id and an address, a service the master takes, the master's region, what it may claim
within :class:`~fogline.core.control.limits.ControlLimits`) and raises
:class:`~fogline.errors.InvalidInputError` for one that may not, and
:class:`~fogline.errors.OverloadedError` when the master is full or the caller registers too often.

Health gating: with ``require_check`` a member that is new, or registers a new address, is held
*unchecked* until :meth:`EmbeddedRegistry.mark_checked` says that its address answered a health
check (``fogline.adapters.grpc.probe``). :meth:`EmbeddedRegistry.members` gives only checked
members, which is what routing and the topology use: an address that never answers is never routed to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from fogline.core.control.limits import (
    DEFAULT_LIMITS,
    ControlLimits,
    RateLimiter,
    check_name,
    check_names,
    parse_host_port,
)
from fogline.errors import InvalidInputError, OverloadedError, echo_name, echo_names

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Member:
    """One process in the membership: what it is, where to reach it, what it serves."""

    id: str
    """Unique among its master's members; routing and status go by it."""
    service: str
    """What it is: ``device``, ``edge``, ``worker`` or ``cloud``."""
    address: str
    """host:port of its V2 gRPC service."""
    region: str = ""
    """The region it serves ("" for none)."""
    models: frozenset[str] = frozenset()
    """Names of the models it serves."""
    capacity: int = 0
    """How many requests it runs at once at most (0: not reported)."""
    http_address: str = ""
    """host:port of its REST status ("" for none)."""
    meta: dict[str, str] = field(default_factory=dict, hash=False)
    """Free-form labels, passed along."""
    versions: frozenset[tuple[str, str]] = frozenset()
    """(model, version) of every model version it has loaded, as its model syncs report them; empty
    when it reports none (a member outside the model lifecycle: it decides itself which versions run)."""


def versions_by_model(member: Member) -> dict[str, list[str]]:
    """A member's loaded versions by model, for status (lowest first)."""
    found: dict[str, list[str]] = {}
    for name, version in sorted(member.versions, key=lambda nv: (nv[0], len(nv[1]), nv[1])):
        found.setdefault(name, []).append(version)
    return found


@dataclass(slots=True)
class Load:
    """What a member is busy with, as its last heartbeat reported."""

    in_flight: int = 0
    queue_depth: int = 0


@dataclass(slots=True)
class MemberState:
    """A member as the registry holds it: the member, its last load, and when it joined and was last heard."""

    member: Member
    load: Load
    registered_at: float
    last_seen: float
    checked: bool = True
    """Its address answered a health check (or none is required): routing and the topology may use it."""


class EmbeddedRegistry:
    """Members of one scope (an edge master's region), kept alive by heartbeats.

    ``services`` are those that may join (None: any), ``region`` the one they must serve ("": any),
    ``limits`` what each may claim and how often a caller may register. With ``require_check`` a
    member's address must pass a health check before :meth:`members` gives it (see the module).
    """

    def __init__(self, *, ttl_s: float = 3.0, heartbeat_interval_s: float = 1.0,
                 services: frozenset[str] | None = None, region: str = "",
                 limits: ControlLimits = DEFAULT_LIMITS, require_check: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if heartbeat_interval_s >= ttl_s:
            raise ValueError("heartbeat_interval_s must be shorter than ttl_s")
        self.ttl_s = ttl_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.services = services
        self.region = region
        self.limits = limits
        self.require_check = require_check
        self._clock = clock
        self._register_rate = RateLimiter(limits.register_rate_per_s, limits.register_burst, clock=clock)
        self._states: dict[str, MemberState] = {}
        self._external: set[str] = set()  # ids set by sync_service: never expired here
        self._watchers: list[Callable[[], None]] = []

    def admit(self, member: Member, *, caller: str = "") -> None:
        """Register a child that asked to join: OverloadedError (with a retry hint) if ``caller`` (its
        identity or address) registers too often or the master is full, InvalidInputError if it may
        not join this scope."""
        wait_s = self._register_rate.try_acquire(caller)
        if wait_s is not None:
            raise OverloadedError(f"too many registrations from this caller: at most "
                                  f"{self.limits.register_rate_per_s:g} per second; retry in {wait_s:.2f}s",
                                  retry_after_s=wait_s)
        self.check_admissible(member)
        self.register(member)

    def check_admissible(self, member: Member) -> None:
        """InvalidInputError unless ``member`` has an id and an address, its service and region belong
        here (a member that names no region is taken in any), and what it claims is within the limits;
        OverloadedError if it is new and the master holds its maximum of members."""
        if not member.id or not member.address:
            raise InvalidInputError("member id and address are required")
        check_name("member id", member.id, self.limits)
        check_name("service", member.service, self.limits)
        check_name("region", member.region, self.limits, allow_empty=True)
        if self.services is not None and member.service not in self.services:
            raise InvalidInputError(f"service {echo_name(member.service)} cannot join here; "
                                    f"expected {sorted(self.services)}")
        if self.region and member.region and member.region != self.region:
            raise InvalidInputError(f"member of region {echo_name(member.region)} cannot join region "
                                    f"{echo_name(self.region)}")
        self._check_claims(member)
        self._check_room(member.id)

    def _check_claims(self, member: Member) -> None:
        """What the member says of itself: addresses, capacity, models and meta within the limits."""
        parse_host_port(member.address, "member address")
        if member.http_address:
            parse_host_port(member.http_address, "member http_address")
        if member.capacity < 0:
            raise InvalidInputError(f"capacity {member.capacity} is negative; report 0 for none")
        check_names("model name", member.models, self.limits)
        if len(member.meta) > self.limits.max_meta_entries:
            raise InvalidInputError(f"{len(member.meta)} meta entries; at most {self.limits.max_meta_entries} "
                                    f"are allowed per member")
        for key, value in member.meta.items():
            check_name("meta key", key, self.limits)
            check_name(f"meta {echo_name(key)} value", value, self.limits, allow_empty=True)

    def _check_room(self, member_id: str) -> None:
        if member_id not in self._states and len(self._states) >= self.limits.max_members:
            raise OverloadedError(f"this master holds its maximum of {self.limits.max_members} members; "
                                  f"join another master or retry once members have left",
                                  retry_after_s=self.ttl_s)

    def register(self, member: Member) -> None:
        """Add ``member`` or refresh it; a changed member replaces the old one (and its load). With
        ``require_check`` a new member, or one at a new address, is unchecked until :meth:`mark_checked`."""
        now = self._clock()
        old = self._states.get(member.id)
        if old is not None and old.member == member:
            old.last_seen = now
            return
        kept = old is not None and old.checked and old.member.address == member.address
        checked = not self.require_check or kept
        self._states[member.id] = MemberState(member, Load(), now, now, checked)
        log.info("registered %s %s at %s (models %s)%s", member.service, member.id, member.address,
                 echo_names(sorted(member.models)), "" if checked else "; routed to once it passes a health check")
        self._changed()

    def mark_checked(self, member_id: str, address: str) -> bool:
        """Record that ``member_id`` answered a health check at ``address``: True if it is a member at
        that address (now checked), False if it left or moved meanwhile (its new address is unchecked)."""
        state = self._states.get(member_id)
        if state is None or state.member.address != address:
            return False
        if not state.checked:
            state.checked = True
            self._changed()
        return True

    def unchecked(self) -> list[MemberState]:
        """The members waiting for their address to pass a health check."""
        return [s for s in self._states.values() if not s.checked]

    def heartbeat(self, member_id: str, load: Load, models: Iterable[str] | None = None) -> bool:
        """Record a heartbeat; False if the member is unknown and must register again. InvalidInputError
        (and nothing recorded) if ``models`` are not within the limits."""
        state = self._states.get(member_id)
        if state is None:
            return False
        reported = None if models is None else frozenset(models)
        if reported is not None:
            check_names("model name", reported, self.limits)
        state.last_seen = self._clock()
        state.load = load
        if reported is not None and reported != state.member.models:
            state.member = replace(state.member, models=reported)
            self._changed()
        return True

    def set_versions(self, member_id: str, versions: Iterable[tuple[str, str]]) -> bool:
        """Record the model versions ``member_id`` has loaded (its model sync); False if it is unknown.
        InvalidInputError (and nothing recorded) for more versions than the limits allow or bad names."""
        state = self._states.get(member_id)
        if state is None:
            return False
        reported = frozenset(versions)
        if len(reported) > 4 * self.limits.max_models_per_member:
            raise InvalidInputError(f"{len(reported)} model versions reported; at most "
                                    f"{4 * self.limits.max_models_per_member} are allowed per member")
        check_names("model name", {name for name, _ in reported}, self.limits)
        check_names("model version", {version for _, version in reported}, self.limits)
        if reported != state.member.versions:
            state.member = replace(state.member, versions=reported)
            self._changed()
        return True

    def sync_service(self, service: str, members: Iterable[Member]) -> None:
        """Make ``members`` the members of ``service`` as an external registry reports them: add the
        new, drop the missing, keep the state (load) of the unchanged. They count as checked: their
        registry runs its own health checks."""
        now = self._clock()
        current = {m.id: m for m in members}
        changed = False
        for mid in [mid for mid, st in self._states.items() if st.member.service == service and mid not in current]:
            del self._states[mid]
            self._external.discard(mid)
            changed = True
        for mid, member in current.items():
            old = self._states.get(mid)
            if old is None or old.member != member or not old.checked:
                self._states[mid] = MemberState(member, old.load if old else Load(), now, now)
                changed = True
            self._external.add(mid)
        if changed:
            log.info("%s members now %s", service, sorted(current))
            self._changed()

    def deregister(self, member_id: str) -> bool:
        """Drop a member that left; False if it was not known."""
        self._external.discard(member_id)
        if self._states.pop(member_id, None) is None:
            return False
        log.info("deregistered %s", member_id)
        self._changed()
        return True

    def expire(self) -> list[str]:
        """Drop members not heard from for ``ttl_s``; their ids."""
        cutoff = self._clock() - self.ttl_s
        gone = [mid for mid, s in self._states.items() if s.last_seen < cutoff and mid not in self._external]
        for mid in gone:
            del self._states[mid]
            log.warning("expired %s: no heartbeat for %.1fs", mid, self.ttl_s)
        if gone:
            self._changed()
        return gone

    def members(self, service: str | None = None, *, include_unchecked: bool = False) -> list[MemberState]:
        """The states of the checked members of ``service`` (of every service with None): those routing
        and the topology may use. ``include_unchecked`` adds the ones still waiting for a health check
        (for status)."""
        return [s for s in self._states.values()
                if (service is None or s.member.service == service) and (s.checked or include_unchecked)]

    def get(self, member_id: str) -> MemberState | None:
        """The state of ``member_id`` (checked or not); None if it is not a member."""
        return self._states.get(member_id)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change of membership, a member passing its health check included."""
        self._watchers.append(callback)

    def _changed(self) -> None:
        for callback in self._watchers:
            callback()
