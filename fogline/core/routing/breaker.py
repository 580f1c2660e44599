"""A circuit breaker per upstream endpoint (DESIGN.md §5), the core of :mod:`fogline.core.routing.resilience`.

Pure domain logic: time from an injected clock, jitter from an injected ``random.Random``.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fogline.errors import PEER_FAILURE_CODES, ErrorCode

Clock = Callable[[], float]


def classify(code: ErrorCode | None) -> bool:
    """True if a call that ended with ``code`` counts against the peer's health; None is a success.
    NOT_FOUND, INVALID_ARGUMENT and INTERNAL do not: the peer answered."""
    return code in PEER_FAILURE_CODES


class Outcome(enum.Enum):
    """How a call went, as far as the peer's health is concerned."""

    SUCCESS = "success"
    FAILURE = "failure"

    @classmethod
    def of(cls, code: ErrorCode | None) -> Outcome:
        """The outcome of a call that ended with ``code`` (None: it succeeded)."""
        return cls.FAILURE if classify(code) else cls.SUCCESS


class BreakerState(enum.Enum):
    """Closed: calls pass. Open: calls are refused. Half-open: a few probes decide which comes next."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class PermitKind(enum.Enum):
    """Why a breaker let a call through."""

    CALL = "call"
    """The breaker is closed: an ordinary call."""
    PROBE = "probe"
    """The breaker is half-open: the call holds a probe slot until it reports or its deadline passes."""
    FORCED = "forced"
    """The breaker refuses, but the pool's ejection limits keep the endpoint in: the outcome is
    counted in no window and moves no state; the breaker recovers through its own probes."""


@dataclass(eq=False, slots=True)
class Permit:
    """Leave to make one call to an endpoint. Hand it back once: record() or release()."""

    kind: PermitKind
    epoch: int
    """The breaker's state period it was issued in: an outcome counts only in that period."""
    deadline: float = math.inf
    """A probe's deadline on the breaker's clock: unreported by then, it counts as failed. Other
    permits have none here: the caller's own deadline bounds them."""
    settled: bool = field(default=False, init=False)


@dataclass(frozen=True, kw_only=True)
class BreakerSettings:
    """When a breaker opens, for how long, and how it closes again.

    Envoy's outlier detection (consecutive_5xx 5, interval 10 s, base_ejection_time 30 s) and
    resilience4j (slidingWindowSize 100, minimumNumberOfCalls 100, failureRateThreshold 50%,
    slowCallDurationThreshold 60 s, waitDurationInOpenState 60 s, permittedNumberOfCallsInHalfOpenState
    10) are tuned for large server fleets and calls of seconds. Fogline's defaults are much shorter:
    an inference call on the edge takes tens of milliseconds, a pool holds a handful of device nodes
    that each see a few to a few hundred requests a second, and a dead peer must be ejected within a
    second, long before Consul's health checks drop it (about a minute). So every rule is checked on
    each call, as Envoy checks consecutive_5xx, not once per interval as its rate analysis does: ten
    seconds of a dead peer would be ten seconds of failed requests. Being wrong is cheap: a false trip
    costs one second without one endpoint, and every open period ends in a probe.
    """

    window_size: int = 20
    """Calls in the sliding window the failure and slow-call rates are taken over. resilience4j's 100
    calls are several seconds of a sick device node at edge traffic; 20 are about the last second of a
    busy one."""
    minimum_calls: int = 10
    """Calls the window must hold before its rates can open the breaker (resilience4j: 100). Ten is
    the least where a 50% rate (five failures) is more than noise; a dead peer at lower traffic is
    caught by ``consecutive_failures`` instead."""
    failure_rate_threshold: float = 0.5
    """Share of failed calls in the window (at or above) that opens the breaker; resilience4j's 50%:
    a peer failing half its calls costs more in retries than its capacity is worth."""
    consecutive_failures: int = 3
    """Failures in a row that open the breaker at once (Envoy's consecutive_5xx: 5). Every failure is
    a user request spending the retry budget, and three in a row from a peer that answered none of
    them is a clear verdict: at three requests a second the peer is out within a second."""
    slow_call_s: float = 1.0
    """A call at least this long counts as slow (resilience4j: 60 s). Edge calls take tens of
    milliseconds; one over a second has already missed any interactive budget."""
    slow_call_rate_threshold: float = 0.5
    """Share of slow calls in the window (at or above) that opens the breaker. resilience4j's 100%
    never trips on a peer that is merely mostly slow; a peer that makes half its callers wait over a
    second hurts them as much as one that fails them."""
    base_open_s: float = 1.0
    """How long the first trip keeps the breaker open (Envoy: 30 s, resilience4j: 60 s). A device
    node restarts in seconds and a pool of four misses a quarter of its capacity while one is out,
    so a recovered peer should be back within a second or two; a probe costs one request."""
    open_backoff: float = 2.0
    """Growth of the open time per consecutive trip (Envoy grows it linearly per ejection, up to
    300 s), so a peer that keeps failing its probes costs ever fewer requests."""
    max_open_s: float = 10.0
    """Cap of the open time: a peer that comes back after a long outage (a reboot) is found within
    ten seconds, at the price of one probe per ten seconds while it is down."""
    open_jitter: float = 0.2
    """The open time is scaled by a uniform factor in [1 - jitter, 1 + jitter], after the cap, so that
    the breakers of many edge masters that tripped on one outage do not probe the peer in lockstep."""
    half_open_probes: int = 2
    """Probes in flight at once while half-open (resilience4j: 10). Two, so that one slow probe does
    not hold up a peer that is fine; few, since each probe to a peer still down is a user request."""
    probe_successes: int = 3
    """Successful probes (any failure reopens first) that close the breaker again."""
    probe_timeout_s: float = 1.0
    """A probe unreported after this long counts as failed and frees its slot, so a hung peer cannot
    wedge the breaker half-open. Equal to ``slow_call_s``: a later answer would count as slow anyway."""
    healthy_reset_s: float = 30.0
    """After the breaker has stayed closed this long, its next trip counts as the first again and
    opens it for ``base_open_s``; a peer that flaps sooner keeps its longer open time."""

    def __post_init__(self) -> None:
        rates_ok = 0 < self.failure_rate_threshold <= 1 and 0 < self.slow_call_rate_threshold <= 1
        counts_ok = 1 <= self.minimum_calls <= self.window_size and self.consecutive_failures >= 1
        probes_ok = self.half_open_probes >= 1 and self.probe_successes >= 1 and self.probe_timeout_s > 0
        open_ok = 0 < self.base_open_s <= self.max_open_s and self.open_backoff >= 1 and 0 <= self.open_jitter < 1
        if not (rates_ok and counts_ok and probes_ok and open_ok and self.slow_call_s > 0
                and self.healthy_reset_s >= 0):
            raise ValueError(f"inconsistent breaker settings: need rates in (0, 1], 1 <= minimum_calls <= "
                             f"window_size, counts >= 1, 0 < base_open_s <= max_open_s, open_backoff >= 1, "
                             f"0 <= open_jitter < 1 and positive times; got {self}")


@dataclass(frozen=True, kw_only=True, slots=True)
class EndpointHealth:
    """One endpoint of a pool as the ejection limits see it."""

    id: str
    ejected: bool = False
    """Its breaker refuses calls now (open, or half-open with every probe slot taken)."""
    failure_rate: float = 0.0
    """Failure rate of its breaker's window (frozen at the trip while it is not closed)."""
    ejected_since: float | None = None
    """When its current outage began: the first trip since it was last closed."""


class _CallWindow:
    """The failed and slow flags of the last ``size`` calls, with running counts."""

    def __init__(self, size: int) -> None:
        self._calls: deque[tuple[bool, bool]] = deque(maxlen=size)
        self.failures = 0
        self.slow = 0

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, failed: bool, slow: bool) -> None:
        if len(self._calls) == self._calls.maxlen:
            old_failed, old_slow = self._calls[0]
            self.failures -= old_failed
            self.slow -= old_slow
        self._calls.append((failed, slow))
        self.failures += failed
        self.slow += slow

    def clear(self) -> None:
        self._calls.clear()
        self.failures = self.slow = 0

    @property
    def failure_rate(self) -> float:
        return self.failures / len(self._calls) if self._calls else 0.0

    @property
    def slow_rate(self) -> float:
        return self.slow / len(self._calls) if self._calls else 0.0


class CircuitBreaker:
    """The health of one upstream endpoint: closed (calls go through), open (calls are refused),
    half-open (a bounded number of probes decide between the two).

    Time-driven transitions (open → half-open, an expired probe) happen when the breaker is next
    asked, as of the moment they fell due. ``trips``, ``rejections`` and ``expired_probes`` are
    monotonic counters for metrics.
    """

    def __init__(self, settings: BreakerSettings = BreakerSettings(), *, clock: Clock = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._state = BreakerState.CLOSED
        self._epoch = 0
        self._window = _CallWindow(settings.window_size)
        self._consecutive_failures = 0
        self._streak = 0  # trips since the breaker last stayed closed for healthy_reset_s
        self._closed_at = -math.inf
        self._outage_since: float | None = None
        self._open_until = 0.0
        self._probes: set[Permit] = set()
        self._probe_successes = 0
        self.last_trip_reason: str | None = None
        self.trips = 0
        self.rejections = 0
        self.expired_probes = 0

    @property
    def state(self) -> BreakerState:
        self._advance(self._clock())
        return self._state

    @property
    def closed(self) -> bool:
        """Closed now: the cheap check for the common case (a closed breaker changes state only on a
        recorded outcome, never with time alone)."""
        return self._state is BreakerState.CLOSED

    @property
    def accepting(self) -> bool:
        """True if ``allow()`` would give a permit now; changes nothing else."""
        self._advance(self._clock())
        return self._accepting()

    def allow(self, *, force: bool = False) -> Permit | None:
        """A permit for one call, or None if the breaker refuses it. ``force``: the pool's ejection
        limits keep this endpoint in, so give a FORCED permit rather than refuse."""
        now = self._clock()
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return Permit(PermitKind.CALL, self._epoch)
        if self._accepting():
            permit = Permit(PermitKind.PROBE, self._epoch, now + self.settings.probe_timeout_s)
            self._probes.add(permit)
            return permit
        if force:
            return Permit(PermitKind.FORCED, self._epoch)
        self.rejections += 1
        return None

    def record(self, permit: Permit, outcome: Outcome, latency_s: float) -> None:
        """The outcome of the call ``permit`` allowed, and how long it took. An outcome from an
        earlier state period (the call was sent before the breaker last changed state, or the probe
        already expired) is ignored: one outage counts once."""
        now = self._clock()
        self._advance(now)
        if not self._settle(permit):
            return
        failed = outcome is Outcome.FAILURE
        slow = latency_s >= self.settings.slow_call_s
        if permit.kind is PermitKind.PROBE:
            self._probes.discard(permit)
            self._on_probe(now, healthy=not (failed or slow))
        else:
            self._on_call(now, failed, slow)

    def release(self, permit: Permit) -> None:
        """Hand back a permit whose call says nothing about the peer (our own caller cancelled it),
        freeing its probe slot."""
        self._advance(self._clock())
        if self._settle(permit):
            self._probes.discard(permit)

    def health(self, endpoint_id: str) -> EndpointHealth:
        """This endpoint as :class:`EjectionLimits` sees it."""
        self._advance(self._clock())
        ejected = not self._accepting()
        return EndpointHealth(id=endpoint_id, ejected=ejected, failure_rate=self._window.failure_rate,
                              ejected_since=self._outage_since if ejected else None)

    def snapshot(self) -> dict[str, object]:
        """The breaker for ``/v1/status``; times are on the breaker's clock."""
        now = self._clock()
        self._advance(now)
        open_until = self._open_until if self._state is BreakerState.OPEN else None
        return {
            "state": self._state.value,
            "failure_rate": self._window.failure_rate,
            "slow_call_rate": self._window.slow_rate,
            "calls_in_window": len(self._window),
            "consecutive_failures": self._consecutive_failures,
            "trips": self.trips,
            "consecutive_trips": self._current_streak(now),
            "last_trip_reason": self.last_trip_reason,
            "open_until": open_until,
            "open_remaining_s": None if open_until is None else open_until - now,
            "probes_in_flight": len(self._probes),
            "probe_successes": self._probe_successes,
            "rejections": self.rejections,
            "expired_probes": self.expired_probes,
        }

    def _accepting(self) -> bool:
        return self._state is BreakerState.CLOSED or (
            self._state is BreakerState.HALF_OPEN and len(self._probes) < self.settings.half_open_probes)

    def _settle(self, permit: Permit) -> bool:
        """Mark ``permit`` reported; True if its outcome still counts."""
        if permit.settled:
            raise ValueError(f"permit {permit} was already reported")
        permit.settled = True
        return permit.epoch == self._epoch and permit.kind is not PermitKind.FORCED

    def _advance(self, now: float) -> None:
        """Apply the transitions that fell due by ``now``, at the moment each fell due."""
        if self._state is BreakerState.HALF_OPEN and self._probes:
            deadline = min(p.deadline for p in self._probes)
            if deadline <= now:
                self.expired_probes += 1
                self._trip(deadline, "probe_timeout")
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._enter(BreakerState.HALF_OPEN)

    def _on_call(self, now: float, failed: bool, slow: bool) -> None:
        self._window.add(failed, slow)
        self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
        reason = self._trip_reason()
        if reason is not None:
            self._trip(now, reason)

    def _trip_reason(self) -> str | None:
        settings, window = self.settings, self._window
        if self._consecutive_failures >= settings.consecutive_failures:
            return "consecutive_failures"
        if len(window) < settings.minimum_calls:
            return None
        if window.failure_rate >= settings.failure_rate_threshold:
            return "failure_rate"
        if window.slow_rate >= settings.slow_call_rate_threshold:
            return "slow_call_rate"
        return None

    def _on_probe(self, now: float, *, healthy: bool) -> None:
        if not healthy:
            self._trip(now, "probe_failed")
            return
        self._probe_successes += 1
        if self._probe_successes >= self.settings.probe_successes:
            self._close(now)

    def _trip(self, now: float, reason: str) -> None:
        if self._state is BreakerState.CLOSED:
            self._streak = self._current_streak(now)
            self._outage_since = now
        self._streak += 1
        self.trips += 1
        self.last_trip_reason = reason
        self._open_until = now + self._open_duration()
        self._enter(BreakerState.OPEN)

    def _close(self, now: float) -> None:
        self._closed_at = now
        self._outage_since = None
        self._window.clear()
        self._consecutive_failures = 0
        self._enter(BreakerState.CLOSED)

    def _enter(self, state: BreakerState) -> None:
        self._state = state
        self._epoch += 1  # NOTE: outstanding permits now belong to a past period
        self._probes.clear()
        self._probe_successes = 0

    def _current_streak(self, now: float) -> int:
        healed = self._state is BreakerState.CLOSED and now - self._closed_at >= self.settings.healthy_reset_s
        return 0 if healed else self._streak

    def _open_duration(self) -> float:
        """base_open_s grown by open_backoff per consecutive trip, capped, then jittered."""
        settings = self.settings
        growth = (self._streak - 1) * math.log(settings.open_backoff)
        if growth >= math.log(settings.max_open_s / settings.base_open_s):
            duration = settings.max_open_s
        else:
            duration = settings.base_open_s * settings.open_backoff ** (self._streak - 1)
        return duration * (1 + settings.open_jitter * self._rng.uniform(-1.0, 1.0))
