"""Membership: who serves what, with what load. The embedded registry a master holds for its children.

Children register, heartbeat their load, and deregister when they drain; one that misses
heartbeats for ``ttl_s`` is dropped by :meth:`EmbeddedRegistry.expire`. Members learned from an
external registry (Consul) are set wholesale per service with :meth:`EmbeddedRegistry.sync_service`
and are not expired here: their registry's health checks decide. Watchers are called after every
change of membership (not on plain load updates, which they read from the states).

A child joins through :meth:`EmbeddedRegistry.admit`, which holds the rules of who may join this
scope (an id and an address, a service the master takes, the master's region) and raises
:class:`~fogline.errors.InvalidInputError` for one that may not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fogline.errors import InvalidInputError

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


class EmbeddedRegistry:
    """Members of one scope (an edge master's region), kept alive by heartbeats.

    ``services`` are those that may join (None: any), ``region`` the one they must serve ("": any).
    """

    def __init__(self, *, ttl_s: float = 3.0, heartbeat_interval_s: float = 1.0,
                 services: frozenset[str] | None = None, region: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if heartbeat_interval_s >= ttl_s:
            raise ValueError("heartbeat_interval_s must be shorter than ttl_s")
        self.ttl_s = ttl_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.services = services
        self.region = region
        self._clock = clock
        self._states: dict[str, MemberState] = {}
        self._external: set[str] = set()  # ids set by sync_service: never expired here
        self._watchers: list[Callable[[], None]] = []

    def admit(self, member: Member) -> None:
        """Register a child that asked to join; InvalidInputError if it may not join this scope."""
        self.check_admissible(member)
        self.register(member)

    def check_admissible(self, member: Member) -> None:
        """InvalidInputError unless ``member`` has an id and an address, and its service and region
        belong here (a member that names no region is taken in any)."""
        if not member.id or not member.address:
            raise InvalidInputError("member id and address are required")
        if self.services is not None and member.service not in self.services:
            raise InvalidInputError(f"service {member.service!r} cannot join here; expected {sorted(self.services)}")
        if self.region and member.region and member.region != self.region:
            raise InvalidInputError(f"member of region {member.region!r} cannot join region {self.region!r}")

    def register(self, member: Member) -> None:
        """Add ``member`` or refresh it; a changed member replaces the old one (and its load)."""
        now = self._clock()
        old = self._states.get(member.id)
        if old is not None and old.member == member:
            old.last_seen = now
            return
        self._states[member.id] = MemberState(member, Load(), now, now)
        log.info("registered %s %s at %s (models %s)", member.service, member.id, member.address,
                 sorted(member.models))
        self._changed()

    def heartbeat(self, member_id: str, load: Load, models: Iterable[str] | None = None) -> bool:
        """Record a heartbeat; False if the member is unknown and must register again."""
        state = self._states.get(member_id)
        if state is None:
            return False
        state.last_seen = self._clock()
        state.load = load
        if models is not None and frozenset(models) != state.member.models:
            m = state.member
            state.member = Member(id=m.id, service=m.service, address=m.address, region=m.region,
                                  models=frozenset(models), capacity=m.capacity,
                                  http_address=m.http_address, meta=m.meta)
            self._changed()
        return True

    def sync_service(self, service: str, members: Iterable[Member]) -> None:
        """Make ``members`` the members of ``service`` as an external registry reports them: add the
        new, drop the missing, keep the state (load) of the unchanged."""
        now = self._clock()
        current = {m.id: m for m in members}
        changed = False
        for mid in [mid for mid, st in self._states.items() if st.member.service == service and mid not in current]:
            del self._states[mid]
            self._external.discard(mid)
            changed = True
        for mid, member in current.items():
            old = self._states.get(mid)
            if old is None or old.member != member:
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

    def members(self, service: str | None = None) -> list[MemberState]:
        """The states of the members of ``service`` (of every service with None)."""
        return [s for s in self._states.values() if service is None or s.member.service == service]

    def get(self, member_id: str) -> MemberState | None:
        """The state of ``member_id``; None if it is not a member."""
        return self._states.get(member_id)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change of membership."""
        self._watchers.append(callback)

    def _changed(self) -> None:
        for callback in self._watchers:
            callback()
