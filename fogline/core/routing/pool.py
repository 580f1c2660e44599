"""Choosing an upstream endpoint: power-of-two-choices on outstanding requests, or a consistent-hash
ring for session affinity. Pure functions of the pool; no I/O."""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

from fogline.core.control.registry import MemberState
from fogline.core.routing.breaker import CircuitBreaker

U = TypeVar("U")


class Endpoint(Generic[U]):
    """One upstream as the router sees it: identity, the client to reach it, and its load."""

    __slots__ = ("breaker", "outstanding", "state", "upstream")

    def __init__(self, state: MemberState, upstream: U, breaker: CircuitBreaker | None = None) -> None:
        self.state = state  # shared with the registry: heartbeats update its load in place
        self.upstream = upstream
        self.outstanding = 0  # requests this process has sent and not yet had back
        self.breaker = breaker or CircuitBreaker()

    @property
    def id(self) -> str:
        return self.state.member.id

    def load(self) -> tuple[int, int]:
        """Sort key: our own outstanding requests first (exact), the reported queue second."""
        return self.outstanding, self.state.load.queue_depth


def power_of_two_choices(candidates: Sequence[Endpoint[U]], rng: random.Random) -> Endpoint[U]:
    """The less loaded of two distinct random candidates (the only one if there is one)."""
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(range(len(candidates)), 2)
    first, second = candidates[a], candidates[b]
    return second if second.load() < first.load() else first


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing with virtual nodes: a key maps to the same member while it is in the ring,
    and only keys of a member that leaves move."""

    def __init__(self, member_ids: Sequence[str], vnodes: int = 64) -> None:
        points = sorted((_hash(f"{mid}#{i}"), mid) for mid in member_ids for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._ids = [mid for _, mid in points]
        self._distinct = len(set(member_ids))

    def preference(self, key: str) -> list[str]:
        """Member ids in the order ``key`` should try them."""
        if not self._ids:
            return []
        start = bisect.bisect(self._hashes, _hash(key))
        order: list[str] = []
        seen: set[str] = set()
        n = len(self._ids)
        for i in range(n):
            mid = self._ids[(start + i) % n]
            if mid not in seen:
                seen.add(mid)
                order.append(mid)
                if len(order) == self._distinct:
                    break
        return order


class EndpointPool(Generic[U]):
    """The endpoints of one service, indexed by model, kept in step with registry membership."""

    def __init__(self, make_upstream: Callable[[MemberState], U], close_upstream: Callable[[U], None], *,
                 make_breaker: Callable[[], CircuitBreaker] = CircuitBreaker) -> None:
        self._make = make_upstream
        self._close = close_upstream
        self._make_breaker = make_breaker
        self.endpoints: dict[str, Endpoint[U]] = {}
        self._by_model: dict[str, list[Endpoint[U]]] = {}
        self._by_version: dict[tuple[str, str], list[Endpoint[U]]] = {}
        self._rings: dict[str, HashRing] = {}

    def sync(self, states: Sequence[MemberState]) -> None:
        """Add new members, drop departed ones, and follow address changes."""
        current = {s.member.id: s for s in states}
        for mid in list(self.endpoints):
            old = self.endpoints[mid]
            new = current.get(mid)
            if new is None or new.member.address != old.state.member.address:
                self._close(self.endpoints.pop(mid).upstream)
        for mid, state in current.items():
            endpoint = self.endpoints.get(mid)
            if endpoint is None:
                self.endpoints[mid] = Endpoint(state, self._make(state), self._make_breaker())
            else:
                endpoint.state = state
        self._index()

    def _index(self) -> None:
        by_model: dict[str, list[Endpoint[U]]] = {}
        for endpoint in self.endpoints.values():
            for model in endpoint.state.member.models:
                by_model.setdefault(model, []).append(endpoint)
        self._by_model = by_model
        self._by_version = _by_version(self.endpoints.values(), by_model)
        self._rings = {}

    def close(self) -> None:
        self.sync([])

    def reconnect(self) -> None:
        """Give every endpoint a fresh upstream (new credentials: a rotated certificate); the old ones
        are closed by the pool's closer, which lets their calls in flight finish."""
        for endpoint in self.endpoints.values():
            old, endpoint.upstream = endpoint.upstream, self._make(endpoint.state)
            self._close(old)

    def view(self, keep: Callable[[Endpoint[U]], bool]) -> EndpointPool[U]:
        """The endpoints ``keep`` accepts, as a pool of their own that shares them with this one (so
        outstanding counts and breakers are one). A snapshot: take a new view after each :meth:`sync`;
        it owns no upstream and never closes one."""
        view: EndpointPool[U] = EndpointPool(self._make, lambda upstream: None)
        view.endpoints = {mid: e for mid, e in self.endpoints.items() if keep(e)}
        view._by_model = {model: kept for model, endpoints in self._by_model.items()
                          if (kept := [e for e in endpoints if keep(e)])}
        view._by_version = _by_version(view.endpoints.values(), view._by_model)
        return view

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def for_model(self, model: str) -> list[Endpoint[U]]:
        return self._by_model.get(model, [])

    def for_version(self, model: str, version: str) -> list[Endpoint[U]]:
        """The endpoints that may run ``version`` of ``model``: those reporting it loaded, and those that
        report no versions at all (outside the model lifecycle: they decide themselves)."""
        found = self._by_version.get((model, version))
        if found is None:
            return [e for e in self.for_model(model) if not e.state.member.versions]
        return found

    def versions(self, model: str) -> list[str]:
        """The versions of ``model`` the endpoints report loaded, lowest first."""
        found = {v for e in self.for_model(model) for name, v in e.state.member.versions if name == model}
        return sorted(found, key=lambda v: (len(v), v))

    def ring(self, model: str) -> HashRing:
        ring = self._rings.get(model)
        if ring is None:
            ring = self._rings[model] = HashRing([e.id for e in self.for_model(model)])
        return ring


def _by_version(endpoints: Iterable[Endpoint[U]],
                by_model: dict[str, list[Endpoint[U]]]) -> dict[tuple[str, str], list[Endpoint[U]]]:
    """(model, version) -> the endpoints that may run it (see :meth:`EndpointPool.for_version`)."""
    index: dict[tuple[str, str], list[Endpoint[U]]] = {}
    for endpoint in endpoints:
        for key in endpoint.state.member.versions:
            index.setdefault(key, []).append(endpoint)
    for key, holders in index.items():  # members that report no versions may run any
        holders += [e for e in by_model.get(key[0], []) if not e.state.member.versions]
    return index
