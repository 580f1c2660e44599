"""Resilience per upstream endpoint (DESIGN.md §5): a circuit breaker, ejection limits for a pool,
and a retry budget.

Pure domain logic: no I/O, no protocol imports, time from an injected clock and jitter from an
injected ``random.Random``. A dispatcher uses them per request like this::

    plan = limits.routable([breakers[e.id].health(e.id) for e in candidates])
    endpoint = pick one of plan.ids                     # power of two choices, hash ring, ...
    permit = breakers[endpoint.id].allow(force=endpoint.id in plan.forced)
    # permit None: the breaker refuses; pick another endpoint
    # send, then: breaker.record(permit, Outcome.of(code), latency_s)
    #   or, when our own caller cancelled: breaker.release(permit)
    # before sending a retry to another endpoint: budget.try_spend()

Only UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED count against a peer
(``PEER_FAILURE_CODES``): a client's bad input is an answer from a healthy peer.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from fogline.core.routing.breaker import Clock, EndpointHealth

# --- Ejection limits -------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True, slots=True)
class Routable:
    """Which endpoints of a pool a request may go to."""

    ids: tuple[str, ...]
    """The routable endpoints, in the order given."""
    forced: frozenset[str]
    """Those among ``ids`` whose breakers refuse calls but which the limits keep in: ask their
    breakers ``allow(force=True)``."""
    ejected: tuple[str, ...]
    """The endpoints left out."""
    panic: bool
    """Too few endpoints are healthy to trust the breakers: every endpoint is routable."""


def _worst_first(endpoint: EndpointHealth) -> tuple[float, float, str]:
    since = math.inf if endpoint.ejected_since is None else endpoint.ejected_since
    return since, -endpoint.failure_rate, endpoint.id


@dataclass(frozen=True, kw_only=True)
class EjectionLimits:
    """How much of a pool its breakers may take out of routing.

    Rule: below ``panic_threshold`` healthy, route to every endpoint. Otherwise eject at most
    ``floor(max_ejected_share * pool size)`` endpoints, the worst first: the longest out (its breaker
    has failed every probe since), then the highest failure rate, then by id. The rest of the ejected
    endpoints, those whose breakers opened last, stay routable.
    """

    max_ejected_share: float = 0.5
    """Most of a pool that may be ejected (Envoy's max_ejection_percent: 10%). Envoy's share suits
    clusters of hundreds; in an edge pool of three to ten device nodes it leaves only the one ejection
    Envoy always allows, while a shared cause (a switch, a power strip) can take half. Sending work to
    dead peers costs failures and retries, whereas the healthy half sheds excess with
    RESOURCE_EXHAUSTED and the edge can overflow to the cloud. Half still guards against a fault of
    our own (our network, a bad push) opening every breaker at once. Any pool of two or more may
    eject at least one."""
    panic_threshold: float = 0.25
    """Below this share of healthy endpoints, route to all of them rather than crush the last few
    (Envoy's healthy_panic_threshold: 50%). Lower than Envoy's, so that in a small pool the cap above
    decides first: panic is for when nearly all are out and the verdicts are likely a common cause."""

    def __post_init__(self) -> None:
        if not (0 <= self.max_ejected_share <= 1 and 0 <= self.panic_threshold <= 1):
            raise ValueError(f"max_ejected_share and panic_threshold must lie in [0, 1], got {self}")

    def routable(self, endpoints: Sequence[EndpointHealth]) -> Routable:
        """The endpoints of one pool that a request may go to, and whether the pool is in panic."""
        ejected = [e for e in endpoints if e.ejected]
        if not ejected:
            return Routable(ids=tuple(e.id for e in endpoints), forced=frozenset(), ejected=(), panic=False)
        panic = len(endpoints) - len(ejected) < self.panic_threshold * len(endpoints)
        cap = 0 if panic else math.floor(self.max_ejected_share * len(endpoints) + 1e-9)
        ranked = sorted(ejected, key=_worst_first)
        out = {e.id for e in ranked[:cap]}
        return Routable(ids=tuple(e.id for e in endpoints if e.id not in out),
                        forced=frozenset(e.id for e in ranked[cap:]),
                        ejected=tuple(e.id for e in endpoints if e.id in out), panic=panic)


# --- Retry budget ----------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class RetryBudgetSettings:
    """How many retries a dispatcher may send (Finagle's and Linkerd's budget: 20% of requests over
    10 s plus 10 retries a second)."""

    retry_ratio: float = 0.2
    """Retries allowed per request in the window: a failing pool sees at most 20% extra load."""
    min_retries_per_s: float = 2.0
    """Floor of the budget, so that a quiet dispatcher can still retry (Finagle: 10 a second). An edge
    master sees tens of requests a second, where 10 would let retries double the load on a struggling
    pool; 2 takes over from the ratio only below 10 requests a second."""
    window_s: float = 10.0
    """Requests and retries count for this long (Finagle's ttl), long enough to span a burst."""
    buckets: int = 10
    """Time buckets of the sliding window; counts leave it one bucket (1 s by default) at a time."""

    def __post_init__(self) -> None:
        if self.retry_ratio < 0 or self.min_retries_per_s < 0 or self.window_s <= 0 or self.buckets < 1:
            raise ValueError(f"need retry_ratio >= 0, min_retries_per_s >= 0, window_s > 0 and buckets >= 1, "
                             f"got {self}")


@dataclass(slots=True)
class _Bucket:
    index: int
    requests: int = 0
    retries: int = 0


class RetryBudget:
    """Retries as a share of live traffic, over a sliding window of time buckets.

    ``record_request()`` for each first attempt (retries are not traffic to take a share of);
    ``try_spend()`` before each retry. ``requests_total``, ``retries_total`` and ``rejected_total``
    are monotonic counters for metrics.
    """

    def __init__(self, settings: RetryBudgetSettings = RetryBudgetSettings(), *,
                 clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._bucket_s = settings.window_s / settings.buckets
        self._buckets: deque[_Bucket] = deque()
        self.requests_total = 0
        self.retries_total = 0
        self.rejected_total = 0

    def record_request(self) -> None:
        """A request's first attempt went out."""
        self._current().requests += 1
        self.requests_total += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and counted) if it is spent."""
        bucket = self._current()
        if self.available() < 1:
            self.rejected_total += 1
            return False
        bucket.retries += 1
        self.retries_total += 1
        return True

    def available(self) -> float:
        """Retries the budget holds now."""
        self._current()
        settings = self.settings
        requests = sum(b.requests for b in self._buckets)
        retries = sum(b.retries for b in self._buckets)
        return settings.retry_ratio * requests + settings.min_retries_per_s * settings.window_s - retries

    def snapshot(self) -> dict[str, object]:
        """The budget for ``/v1/status``."""
        available = self.available()
        return {"requests_in_window": sum(b.requests for b in self._buckets),
                "retries_in_window": sum(b.retries for b in self._buckets), "available": available,
                "requests_total": self.requests_total, "retries_total": self.retries_total,
                "rejected_total": self.rejected_total}

    def _current(self) -> _Bucket:
        """The bucket of now, after dropping those that left the window."""
        index = math.floor(self._clock() / self._bucket_s)
        while self._buckets and self._buckets[0].index <= index - self.settings.buckets:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1].index != index:
            self._buckets.append(_Bucket(index))
        return self._buckets[-1]
