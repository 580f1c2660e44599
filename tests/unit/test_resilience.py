"""Resilience: the circuit breaker's transitions, ejection limits of a pool, the retry budget."""

from __future__ import annotations

import random

import pytest

from fogline.core.routing.breaker import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    EndpointHealth,
    Outcome,
    Permit,
    PermitKind,
    classify,
)
from fogline.core.routing.resilience import EjectionLimits, RetryBudget, RetryBudgetSettings
from fogline.errors import ErrorCode

OK, FAIL = Outcome.SUCCESS, Outcome.FAILURE
FAST = 0.01  # s, an ordinary edge call


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: Clock, seed: int = 0, **overrides: float) -> CircuitBreaker:
    """A breaker without jitter unless asked, so open times are exact."""
    settings = BreakerSettings(**{"open_jitter": 0.0, **overrides})  # type: ignore[arg-type]
    return CircuitBreaker(settings, clock=clock, rng=random.Random(seed))


def call(breaker: CircuitBreaker, outcome: Outcome = OK, latency_s: float = FAST) -> None:
    permit = breaker.allow()
    assert permit is not None
    breaker.record(permit, outcome, latency_s)


def trip(breaker: CircuitBreaker) -> None:
    while breaker.state is BreakerState.CLOSED:
        call(breaker, FAIL)


def open_for(breaker: CircuitBreaker, clock: Clock) -> float:
    until = breaker.snapshot()["open_until"]
    assert isinstance(until, float)
    return until - clock.now


def to_half_open(breaker: CircuitBreaker, clock: Clock) -> None:
    clock.advance(open_for(breaker, clock))
    assert breaker.state is BreakerState.HALF_OPEN


def probe(breaker: CircuitBreaker) -> Permit:
    permit = breaker.allow()
    assert permit is not None and permit.kind is PermitKind.PROBE
    return permit


# --- Classification --------------------------------------------------------------------------------

def test_only_peer_failure_codes_count_against_a_peer() -> None:
    failures = {ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED}
    for code in ErrorCode:
        assert classify(code) is (code in failures)
        assert Outcome.of(code) is (FAIL if code in failures else OK)
    assert classify(None) is False and Outcome.of(None) is OK


def test_a_clients_bad_input_never_opens_the_breaker() -> None:
    clock = Clock()
    breaker = make(clock)
    for i in range(200):
        code = (ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND, ErrorCode.INTERNAL)[i % 3]
        call(breaker, Outcome.of(code))
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["failure_rate"] == 0.0 and breaker.trips == 0


# --- Closed → open ---------------------------------------------------------------------------------

def test_failure_rate_opens_only_once_the_window_holds_minimum_calls() -> None:
    clock = Clock()
    breaker = make(clock, window_size=20, minimum_calls=10, consecutive_failures=100)
    for outcome in [FAIL, OK] * 4 + [FAIL]:  # 5 of 9 failed: over 50%, but too few calls to judge
        call(breaker, outcome)
    assert breaker.state is BreakerState.CLOSED
    call(breaker, OK)  # 5 of 10: at the threshold
    assert breaker.state is BreakerState.OPEN
    assert breaker.last_trip_reason == "failure_rate" and breaker.trips == 1


def test_old_successes_leave_the_window_so_a_long_healthy_history_cannot_hide_a_failing_peer() -> None:
    clock = Clock()
    breaker = make(clock, window_size=20, minimum_calls=10, consecutive_failures=100)
    for _ in range(200):
        call(breaker, OK)
    for _ in range(9):  # alternating: never two failures in a row
        call(breaker, FAIL)
        call(breaker, OK)
    assert breaker.state is BreakerState.CLOSED  # 9 of the last 20 failed
    assert breaker.snapshot()["failure_rate"] == pytest.approx(9 / 20)
    call(breaker, FAIL)  # 10 of the last 20; 10 of 219 over all time
    assert breaker.state is BreakerState.OPEN


def test_consecutive_failures_open_the_breaker_before_minimum_calls_and_a_success_resets_the_count() -> None:
    clock = Clock()
    breaker = make(clock, consecutive_failures=3)
    for outcome in (FAIL, FAIL, OK, FAIL, FAIL):
        call(breaker, outcome)
    assert breaker.state is BreakerState.CLOSED
    call(breaker, FAIL)
    assert breaker.state is BreakerState.OPEN and breaker.last_trip_reason == "consecutive_failures"


def test_slow_call_rate_opens_the_breaker_even_when_every_call_succeeds() -> None:
    clock = Clock()
    breaker = make(clock, slow_call_s=1.0, slow_call_rate_threshold=0.5, minimum_calls=10)
    for _ in range(10):
        call(breaker, OK, latency_s=0.999)
    assert breaker.state is BreakerState.CLOSED and breaker.snapshot()["slow_call_rate"] == 0.0
    for i in range(10):
        call(breaker, OK, latency_s=1.0 if i % 2 else 0.2)
    assert breaker.state is BreakerState.CLOSED  # 5 of the last 20 slow
    for _ in range(5):
        call(breaker, OK, latency_s=1.5)
    assert breaker.state is BreakerState.OPEN and breaker.last_trip_reason == "slow_call_rate"


def test_defaults_eject_a_dead_peer_within_a_second_at_three_requests_a_second() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock, rng=random.Random(1))
    for _ in range(50):  # a healthy history
        call(breaker, OK)
    start = clock.now
    while breaker.state is BreakerState.CLOSED:
        clock.advance(1 / 3)
        call(breaker, Outcome.of(ErrorCode.UNAVAILABLE), latency_s=0.002)
    assert clock.now - start <= 1.0 + 1e-9


# --- Open --------------------------------------------------------------------------------------------

def test_an_open_breaker_refuses_calls_until_its_open_time_has_passed() -> None:
    clock = Clock()
    breaker = make(clock, base_open_s=1.0)
    trip(breaker)
    clock.advance(0.999)
    assert breaker.allow() is None and breaker.allow() is None
    assert breaker.rejections == 2 and not breaker.accepting
    clock.advance(0.001)
    assert breaker.state is BreakerState.HALF_OPEN and breaker.accepting


def test_open_time_doubles_with_each_consecutive_trip_up_to_the_cap() -> None:
    clock = Clock()
    breaker = make(clock, base_open_s=1.0, open_backoff=2.0, max_open_s=10.0)
    trip(breaker)
    seen = [open_for(breaker, clock)]
    for _ in range(5):
        to_half_open(breaker, clock)
        breaker.record(probe(breaker), FAIL, FAST)
        seen.append(open_for(breaker, clock))
    assert seen == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert breaker.trips == 6 and breaker.snapshot()["consecutive_trips"] == 6


def test_jitter_spreads_open_times_within_its_bounds_below_and_at_the_cap() -> None:
    for trips, nominal in ((1, 1.0), (8, 10.0)):
        times = []
        for seed in range(300):
            clock = Clock()
            breaker = make(clock, seed=seed, open_jitter=0.2, base_open_s=1.0, max_open_s=10.0)
            trip(breaker)
            for _ in range(trips - 1):
                to_half_open(breaker, clock)
                breaker.record(probe(breaker), FAIL, FAST)
            times.append(open_for(breaker, clock))
        assert all(0.8 * nominal <= t <= 1.2 * nominal for t in times)
        assert max(times) - min(times) > 0.3 * nominal  # spread out, not in lockstep


def test_outcomes_of_calls_sent_before_the_breaker_opened_count_once() -> None:
    clock = Clock()
    breaker = make(clock, consecutive_failures=3)
    in_flight = [breaker.allow() for _ in range(10)]
    for permit in in_flight[:3]:
        assert permit is not None
        breaker.record(permit, FAIL, FAST)
    until = breaker.snapshot()["open_until"]
    for permit in in_flight[3:]:
        assert permit is not None
        breaker.record(permit, FAIL, FAST)
    assert breaker.trips == 1 and breaker.snapshot()["open_until"] == until
    to_half_open(breaker, clock)
    late = breaker.allow()  # a probe; stale outcomes from before do not take or fill its slots
    assert late is not None and breaker.snapshot()["probes_in_flight"] == 1


def test_forced_permits_pass_an_open_breaker_without_moving_it() -> None:
    clock = Clock()
    breaker = make(clock)
    trip(breaker)
    forced = breaker.allow(force=True)
    assert forced is not None and forced.kind is PermitKind.FORCED and breaker.rejections == 0
    breaker.record(forced, OK, FAST)
    assert breaker.state is BreakerState.OPEN and breaker.snapshot()["probe_successes"] == 0
    to_half_open(breaker, clock)
    assert breaker.allow(force=True).kind is PermitKind.PROBE  # type: ignore[union-attr]


# --- Half-open -----------------------------------------------------------------------------------

def test_half_open_admits_at_most_half_open_probes_at_once() -> None:
    clock = Clock()
    breaker = make(clock, half_open_probes=2, probe_successes=3, probe_timeout_s=1.0)
    trip(breaker)
    to_half_open(breaker, clock)
    first, second = probe(breaker), probe(breaker)
    assert first.deadline == clock.now + 1.0
    assert breaker.allow() is None and not breaker.accepting and breaker.rejections == 1
    breaker.record(first, OK, FAST)  # a reported probe frees its slot
    third = probe(breaker)
    assert breaker.allow() is None
    assert breaker.snapshot()["probes_in_flight"] == 2 and breaker.state is BreakerState.HALF_OPEN
    breaker.record(second, OK, FAST)
    breaker.record(third, OK, FAST)
    assert breaker.state is BreakerState.CLOSED


def test_enough_successful_probes_close_the_breaker_with_a_fresh_window() -> None:
    clock = Clock()
    breaker = make(clock, half_open_probes=1, probe_successes=3)
    trip(breaker)
    to_half_open(breaker, clock)
    for _ in range(2):
        breaker.record(probe(breaker), OK, FAST)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(probe(breaker), OK, FAST)
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "closed" and snapshot["calls_in_window"] == 0
    assert snapshot["consecutive_failures"] == 0 and snapshot["open_until"] is None
    assert breaker.allow().kind is PermitKind.CALL  # type: ignore[union-attr]


@pytest.mark.parametrize("outcome, latency_s", [(FAIL, FAST), (OK, 1.0)], ids=["failed", "slow"])
def test_a_failed_or_slow_probe_reopens_the_breaker_for_longer(outcome: Outcome, latency_s: float) -> None:
    clock = Clock()
    breaker = make(clock, base_open_s=1.0, slow_call_s=1.0, probe_timeout_s=2.0, probe_successes=2)
    trip(breaker)
    to_half_open(breaker, clock)
    breaker.record(probe(breaker), OK, FAST)
    breaker.record(probe(breaker), outcome, latency_s)
    assert breaker.state is BreakerState.OPEN and breaker.last_trip_reason == "probe_failed"
    assert open_for(breaker, clock) == 2.0


def test_a_hung_probe_expires_counts_as_failed_and_frees_its_slot() -> None:
    clock = Clock()
    breaker = make(clock, half_open_probes=1, probe_timeout_s=1.0, base_open_s=1.0)
    trip(breaker)
    to_half_open(breaker, clock)
    hung = probe(breaker)
    clock.advance(0.5)
    assert breaker.allow() is None  # its slot is taken while it may still answer
    clock.advance(0.5)
    assert breaker.state is BreakerState.OPEN
    assert breaker.expired_probes == 1 and breaker.last_trip_reason == "probe_timeout"
    assert open_for(breaker, clock) == 2.0  # a failed probe: the longer open time, from its deadline
    to_half_open(breaker, clock)
    fresh = probe(breaker)  # the slot is free again
    breaker.record(hung, OK, FAST)  # the hung peer answers at last: too late to count
    assert breaker.snapshot()["probe_successes"] == 0 and breaker.state is BreakerState.HALF_OPEN
    breaker.record(fresh, FAIL, FAST)
    assert breaker.trips == 3


def test_an_expired_probe_is_applied_at_its_deadline_even_if_no_one_asked_then() -> None:
    clock = Clock()
    breaker = make(clock, half_open_probes=1, probe_timeout_s=1.0, base_open_s=1.0)
    trip(breaker)
    to_half_open(breaker, clock)
    probe(breaker)
    clock.advance(1.0 + 2.0)  # the deadline, then the whole second open period, passed unobserved
    assert breaker.state is BreakerState.HALF_OPEN and breaker.expired_probes == 1


def test_release_frees_a_probe_slot_without_judging_the_peer() -> None:
    clock = Clock()
    breaker = make(clock, half_open_probes=1)
    trip(breaker)
    to_half_open(breaker, clock)
    breaker.release(probe(breaker))  # our own caller cancelled
    assert breaker.state is BreakerState.HALF_OPEN and breaker.snapshot()["probe_successes"] == 0
    probe(breaker)


def test_a_permit_reported_twice_is_a_bug() -> None:
    clock = Clock()
    breaker = make(clock)
    permit = breaker.allow()
    assert permit is not None
    breaker.record(permit, OK, FAST)
    with pytest.raises(ValueError, match="already reported"):
        breaker.record(permit, OK, FAST)


# --- Recovery ------------------------------------------------------------------------------------

def recover(breaker: CircuitBreaker, clock: Clock) -> None:
    to_half_open(breaker, clock)
    while breaker.state is BreakerState.HALF_OPEN:
        breaker.record(probe(breaker), OK, FAST)


def test_the_trip_count_resets_only_after_healthy_reset_s_closed() -> None:
    clock = Clock()
    breaker = make(clock, base_open_s=1.0, healthy_reset_s=30.0)
    trip(breaker)
    to_half_open(breaker, clock)
    breaker.record(probe(breaker), FAIL, FAST)  # second trip: open 2 s
    recover(breaker, clock)
    clock.advance(29.0)
    trip(breaker)  # flapping: the streak goes on
    assert open_for(breaker, clock) == 4.0
    recover(breaker, clock)
    clock.advance(30.0)
    assert breaker.snapshot()["consecutive_trips"] == 0
    trip(breaker)  # healthy long enough: a first trip again
    assert open_for(breaker, clock) == 1.0
    assert breaker.trips == 4


# --- Status ----------------------------------------------------------------------------------------

def test_snapshot_reports_what_status_and_metrics_show() -> None:
    clock = Clock()
    breaker = make(clock, window_size=20, minimum_calls=10, consecutive_failures=3, slow_call_s=1.0)
    for outcome, latency_s in [(OK, 2.0), (FAIL, FAST), (OK, FAST), (FAIL, FAST)]:
        call(breaker, outcome, latency_s)
    closed = breaker.snapshot()
    assert closed == {
        "state": "closed", "failure_rate": 0.5, "slow_call_rate": 0.25, "calls_in_window": 4,
        "consecutive_failures": 1, "trips": 0, "consecutive_trips": 0, "last_trip_reason": None,
        "open_until": None, "open_remaining_s": None, "probes_in_flight": 0, "probe_successes": 0,
        "rejections": 0, "expired_probes": 0,
    }
    call(breaker, FAIL)
    call(breaker, FAIL)
    breaker.allow()
    clock.advance(0.25)
    opened = breaker.snapshot()
    assert opened["state"] == "open" and opened["trips"] == 1 and opened["rejections"] == 1
    assert opened["last_trip_reason"] == "consecutive_failures" and opened["failure_rate"] == pytest.approx(4 / 6)
    assert opened["open_until"] == 101.0 and opened["open_remaining_s"] == 0.75
    to_half_open(breaker, clock)
    probe(breaker)
    assert breaker.snapshot()["state"] == "half_open" and breaker.snapshot()["probes_in_flight"] == 1


def test_health_marks_an_endpoint_ejected_while_its_breaker_refuses_calls() -> None:
    clock = Clock()
    breaker = make(clock, half_open_probes=1)
    assert breaker.health("d1") == EndpointHealth(id="d1")
    trip(breaker)
    outage = clock.now
    health = breaker.health("d1")
    assert health.ejected and health.ejected_since == outage and health.failure_rate == 1.0
    to_half_open(breaker, clock)
    assert not breaker.health("d1").ejected  # a probe may go there
    failed = probe(breaker)
    assert breaker.health("d1").ejected  # every slot taken
    clock.advance(0.1)
    breaker.record(failed, FAIL, FAST)
    assert breaker.health("d1").ejected_since == outage  # still the same outage


@pytest.mark.parametrize("overrides", [
    {"minimum_calls": 21}, {"failure_rate_threshold": 0.0}, {"consecutive_failures": 0},
    {"base_open_s": 20.0}, {"open_jitter": 1.0}, {"half_open_probes": 0}, {"probe_timeout_s": 0.0},
])
def test_inconsistent_breaker_settings_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="inconsistent breaker settings"):
        BreakerSettings(**overrides)  # type: ignore[arg-type]


# --- Ejection limits -------------------------------------------------------------------------------

def pool(*ejected: tuple[str, float, float], healthy: int = 0) -> list[EndpointHealth]:
    """``healthy`` healthy endpoints h0.., then the ejected ones as (id, since, failure rate)."""
    return ([EndpointHealth(id=f"h{i}") for i in range(healthy)]
            + [EndpointHealth(id=i, ejected=True, ejected_since=s, failure_rate=r) for i, s, r in ejected])


def test_ejected_endpoints_are_routed_around_within_the_cap() -> None:
    plan = EjectionLimits(max_ejected_share=0.5, panic_threshold=0.25).routable(pool(("d", 1.0, 1.0), healthy=3))
    assert plan.ids == ("h0", "h1", "h2") and plan.ejected == ("d",)
    assert plan.forced == frozenset() and not plan.panic


def test_never_more_than_the_share_is_ejected_and_the_most_recently_ejected_stay_in() -> None:
    limits = EjectionLimits(max_ejected_share=0.5, panic_threshold=0.25)
    endpoints = pool(("late", 30.0, 1.0), ("early", 10.0, 0.2), ("mid", 20.0, 0.5), ("latest", 40.0, 1.0),
                     healthy=2)
    plan = limits.routable(endpoints)  # 4 of 6 ejected, at most 3 may be
    assert plan.ejected == ("late", "early", "mid") and plan.ids == ("h0", "h1", "latest")
    assert plan.forced == {"latest"} and not plan.panic


def test_among_endpoints_ejected_together_the_lowest_failure_rate_stays_in() -> None:
    limits = EjectionLimits(max_ejected_share=0.5, panic_threshold=0.0)
    plan = limits.routable(pool(("a", 5.0, 0.9), ("b", 5.0, 0.5), ("c", 5.0, 1.0), healthy=1))
    assert plan.ejected == ("a", "c") and plan.forced == {"b"}


def test_below_the_panic_threshold_every_endpoint_is_routable() -> None:
    limits = EjectionLimits(max_ejected_share=0.5, panic_threshold=0.25)
    plan = limits.routable(pool(("a", 1.0, 1.0), ("b", 2.0, 1.0), ("c", 3.0, 1.0), ("d", 4.0, 1.0), ("e", 5.0, 1.0),
                                healthy=1))  # 1 of 6 healthy
    assert plan.panic and plan.ids == ("h0", "a", "b", "c", "d", "e") and plan.ejected == ()
    assert plan.forced == {"a", "b", "c", "d", "e"}
    one_dead = limits.routable(pool(("only", 1.0, 1.0)))
    assert one_dead.panic and one_dead.ids == ("only",)


def test_at_the_panic_threshold_the_cap_decides() -> None:
    plan = EjectionLimits(max_ejected_share=0.5, panic_threshold=0.25).routable(
        pool(("a", 1.0, 1.0), ("b", 2.0, 1.0), ("c", 3.0, 1.0), healthy=1))  # 1 of 4 healthy
    assert not plan.panic and plan.ejected == ("a", "b") and plan.ids == ("h0", "c")


def test_a_healthy_or_empty_pool_routes_everything_it_has() -> None:
    limits = EjectionLimits()
    assert limits.routable(pool(healthy=3)).ids == ("h0", "h1", "h2")
    empty = limits.routable([])
    assert empty.ids == () and not empty.panic


def test_ejection_limits_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(ValueError):
        EjectionLimits(max_ejected_share=1.5)
    with pytest.raises(ValueError):
        EjectionLimits(panic_threshold=-0.1)


def test_breakers_feed_ejection_limits() -> None:
    clock = Clock()
    breakers = {f"d{i}": make(clock) for i in range(4)}
    for mid in ("d0", "d1", "d2"):
        trip(breakers[mid])
        clock.advance(0.1)
    plan = EjectionLimits().routable([b.health(mid) for mid, b in breakers.items()])
    assert plan.ejected == ("d0", "d1") and plan.ids == ("d2", "d3") and plan.forced == {"d2"}
    assert breakers["d2"].allow() is None
    assert breakers["d2"].allow(force=True) is not None


# --- Retry budget ----------------------------------------------------------------------------------

def budget(clock: Clock, **overrides: float) -> RetryBudget:
    return RetryBudget(RetryBudgetSettings(**overrides), clock=clock)  # type: ignore[arg-type]


def test_retries_are_a_share_of_live_traffic() -> None:
    clock = Clock()
    retries = budget(clock, retry_ratio=0.2, min_retries_per_s=0.0)
    assert not retries.try_spend()  # no traffic, no floor
    for _ in range(100):
        retries.record_request()
    assert sum(retries.try_spend() for _ in range(30)) == 20
    assert retries.rejected_total == 11 and retries.retries_total == 20 and retries.requests_total == 100


def test_the_floor_lets_a_quiet_dispatcher_retry() -> None:
    clock = Clock()
    retries = budget(clock, retry_ratio=0.2, min_retries_per_s=2.0, window_s=10.0)
    assert sum(retries.try_spend() for _ in range(25)) == 20
    for _ in range(10):
        retries.record_request()
    assert retries.available() == pytest.approx(2.0)  # the share comes on top of the floor
    assert retries.try_spend() and retries.try_spend() and not retries.try_spend()


def test_requests_and_retries_leave_the_window_as_time_passes() -> None:
    clock = Clock()
    retries = budget(clock, retry_ratio=0.5, min_retries_per_s=0.0, window_s=10.0, buckets=10)
    for _ in range(10):
        retries.record_request()
    clock.advance(5.0)
    for _ in range(10):
        retries.record_request()
    assert sum(retries.try_spend() for _ in range(20)) == 10
    clock.advance(5.0)  # the first 10 requests have left the window; the 10 retries are still in it
    assert retries.available() == pytest.approx(-5.0) and not retries.try_spend()
    clock.advance(5.0)  # everything has left
    assert retries.snapshot()["requests_in_window"] == 0 and retries.available() == 0.0
    assert retries.requests_total == 20 and retries.retries_total == 10


def test_inconsistent_retry_budget_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryBudgetSettings(window_s=0.0)
    with pytest.raises(ValueError):
        RetryBudgetSettings(retry_ratio=-0.1)
