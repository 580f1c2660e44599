"""Dispatcher: retries elsewhere on UNAVAILABLE / RESOURCE_EXHAUSTED / an attempt timeout, within the
deadline and the retry budget, never on bad input; every outcome reaches the endpoint's breaker."""

from __future__ import annotations

import asyncio
import random

import pytest

from fogline.core.control.registry import Load, Member, MemberState
from fogline.core.routing.attempt import RetryElsewhere, attempt
from fogline.core.routing.breaker import BreakerSettings, BreakerState, CircuitBreaker, Outcome
from fogline.core.routing.dispatch import Dispatcher, DispatchSettings, RegionalDispatch
from fogline.core.routing.pool import EndpointPool
from fogline.core.routing.resilience import RetryBudgetSettings
from fogline.errors import (
    DeadlineExceededError,
    ErrorCode,
    FoglineError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    UnavailableError,
)

# One failure opens a circuit: crisp outcomes (the breaker's own rules are tested in test_resilience).
BREAKER = BreakerSettings(consecutive_failures=1, open_jitter=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class FakeUpstream:
    """Implements fogline.core.routing.dispatch.Upstream: answers, or fails with a given error."""

    def __init__(self, name: str, error: FoglineError | None = None, clock: Clock | None = None,
                 takes_s: float = 0.0) -> None:
        self.name = name
        self.error = error
        self.calls: list[float | None] = []
        self.clock = clock
        self.takes_s = takes_s

    async def infer(self, request: bytes, timeout_s: float | None) -> bytes:
        self.calls.append(timeout_s)
        if self.clock is not None:
            self.clock.now += self.takes_s
        if self.error is not None:
            raise self.error
        return self.name.encode() + b":" + request


def make(upstreams: dict[str, FakeUpstream], models: tuple[str, ...] = ("m",), clock: Clock | None = None,
         **settings: object) -> Dispatcher[bytes]:
    clock = clock or Clock()
    pool: EndpointPool[FakeUpstream] = EndpointPool(lambda s: upstreams[s.member.id], lambda u: None,
                                                    make_breaker=lambda: CircuitBreaker(BREAKER, clock=clock))
    pool.sync([MemberState(Member(id=n, service="device", address=f"{n}:1", models=frozenset(models)),
                           Load(), 0.0, 0.0) for n in upstreams])
    return Dispatcher(pool, "region 'r'", DispatchSettings(**{"attempt_timeout_s": None, **settings}),  # type: ignore[arg-type]
                      rng=random.Random(3), clock=clock)


async def test_a_request_that_fails_with_unavailable_is_retried_on_another_endpoint() -> None:
    down = FakeUpstream("a", UnavailableError("a: connection refused"))
    up = FakeUpstream("b")
    dispatcher = make({"a": down, "b": up})
    results = [await dispatcher.infer("m", b"x") for _ in range(20)]
    assert {r.response for r in results} == {b"b:x"}
    assert any(r.attempts == 2 for r in results)
    assert len(down.calls) == 1  # after its failure a's circuit opens and it is passed over
    assert dispatcher.pool.endpoints["a"].breaker.state is BreakerState.OPEN


async def test_an_overloaded_endpoint_is_retried_elsewhere_and_its_circuit_sheds_it() -> None:
    busy = FakeUpstream("a", OverloadedError("queue full"))
    dispatcher = make({"a": busy, "b": FakeUpstream("b")})
    for _ in range(10):
        assert (await dispatcher.infer("m", b"x")).endpoint == "b"
    assert len(busy.calls) == 1 and dispatcher.pool.endpoints["a"].breaker.state is BreakerState.OPEN


async def test_a_hung_endpoint_is_abandoned_after_the_attempt_timeout_and_retried_elsewhere() -> None:
    clock = Clock()
    hung = FakeUpstream("a", DeadlineExceededError("no answer"), clock=clock, takes_s=0.2)
    up = FakeUpstream("b", clock=clock)
    dispatcher = make({"a": hung, "b": up}, clock=clock, attempt_timeout_s=0.2)
    dispatcher.pool.endpoints["b"].outstanding = 5  # a first
    done = await dispatcher.infer("m", b"x", deadline=clock.now + 1.0)
    assert (done.endpoint, done.attempts) == ("b", 2)
    assert hung.calls == [pytest.approx(0.2)] and up.calls == [pytest.approx(0.2)]
    assert dispatcher.pool.endpoints["a"].breaker.state is BreakerState.OPEN


async def test_the_callers_own_deadline_is_final_and_says_nothing_about_the_peer() -> None:
    clock = Clock()
    slow = FakeUpstream("a", DeadlineExceededError("no answer"), clock=clock, takes_s=0.5)
    dispatcher = make({"a": slow, "b": FakeUpstream("b")}, clock=clock, attempt_timeout_s=1.0)
    dispatcher.pool.endpoints["b"].outstanding = 5
    with pytest.raises(DeadlineExceededError, match="deadline passed waiting for a"):
        await dispatcher.infer("m", b"x", deadline=clock.now + 0.5)
    assert slow.calls == [pytest.approx(0.5)]
    assert dispatcher.pool.endpoints["a"].breaker.snapshot()["consecutive_failures"] == 0


async def test_no_retry_once_the_budget_is_spent() -> None:
    down = FakeUpstream("a", UnavailableError("a: refused"))
    dispatcher = make({"a": down, "b": FakeUpstream("b")},
                      retry_budget=RetryBudgetSettings(retry_ratio=0.0, min_retries_per_s=0.0))
    dispatcher.pool.endpoints["b"].outstanding = 5
    with pytest.raises(UnavailableError, match="the retry budget is spent; last: a: refused"):
        await dispatcher.infer("m", b"x")
    assert dispatcher.budget.snapshot()["rejected_total"] == 1


@pytest.mark.parametrize("error", [InvalidInputError("bad shape"), ModelNotFoundError("no such version")])
async def test_bad_input_is_never_retried(error: FoglineError) -> None:
    a, b = FakeUpstream("a", error), FakeUpstream("b", error)
    dispatcher = make({"a": a, "b": b})
    with pytest.raises(type(error)):
        await dispatcher.infer("m", b"x")
    assert len(a.calls) + len(b.calls) == 1


async def test_every_endpoint_down_is_unavailable_naming_the_last_failure() -> None:
    dispatcher = make({n: FakeUpstream(n, UnavailableError(f"{n}: refused")) for n in "abc"}, max_attempts=3)
    with pytest.raises(UnavailableError, match=r"failed on 3 endpoints in region 'r'; last: .: refused"):
        await dispatcher.infer("m", b"x")


async def test_unknown_model_is_not_found_and_lists_what_is_served() -> None:
    dispatcher = make({"a": FakeUpstream("a")}, models=("mlp", "cnn"))
    with pytest.raises(ModelNotFoundError, match=r"'resnet' is not served in region 'r'; available: \['cnn', 'mlp'\]"):
        await dispatcher.infer("resnet", b"x")


async def test_each_attempt_gets_only_what_is_left_of_the_deadline() -> None:
    clock = Clock()
    slow_down = FakeUpstream("a", UnavailableError("a: reset"), clock=clock, takes_s=0.4)
    up = FakeUpstream("b", clock=clock)
    dispatcher = make({"a": slow_down, "b": up}, clock=clock)
    dispatcher._rng = random.Random(0)
    # Force a first: make b look busy.
    dispatcher.pool.endpoints["b"].outstanding = 5
    done = await dispatcher.infer("m", b"x", deadline=clock.now + 1.0)
    assert done.endpoint == "b"
    assert slow_down.calls == [pytest.approx(1.0)]
    assert up.calls == [pytest.approx(0.6)]


async def test_no_attempt_starts_after_the_deadline() -> None:
    clock = Clock()
    dispatcher = make({"a": FakeUpstream("a", UnavailableError("down"), clock=clock, takes_s=2.0),
                       "b": FakeUpstream("b")}, clock=clock)
    dispatcher.pool.endpoints["b"].outstanding = 5
    with pytest.raises(DeadlineExceededError):
        await dispatcher.infer("m", b"x", deadline=clock.now + 1.0)


async def test_a_caller_without_deadline_gets_the_default_timeout() -> None:
    up = FakeUpstream("a")
    await make({"a": up}, default_timeout_s=7.0).infer("m", b"x")
    assert up.calls == [pytest.approx(7.0)]


async def test_when_every_circuit_is_open_the_pool_panics_and_tries_them_anyway() -> None:
    clock = Clock()
    dispatcher = make({"a": FakeUpstream("a")}, clock=clock)
    breaker = dispatcher.pool.endpoints["a"].breaker
    permit = breaker.allow()
    assert permit is not None
    breaker.record(permit, Outcome.FAILURE, 0.01)
    assert breaker.state is BreakerState.OPEN
    assert (await dispatcher.infer("m", b"x")).response == b"a:x"


async def test_session_key_pins_requests_to_one_endpoint_and_moves_only_when_it_fails() -> None:
    ups = {n: FakeUpstream(n) for n in "abcd"}
    dispatcher = make(ups)
    first = (await dispatcher.infer("m", b"x", session="user-42")).endpoint
    assert {(await dispatcher.infer("m", b"x", session="user-42")).endpoint for _ in range(20)} == {first}
    ups[first].error = UnavailableError("gone")
    moved = await dispatcher.infer("m", b"x", session="user-42")
    assert moved.endpoint != first and moved.attempts == 2
    spread = {(await dispatcher.infer("m", b"x", session=f"k{i}")).endpoint for i in range(40)}
    assert len(spread) >= 3


async def test_outstanding_counts_return_to_zero_after_success_and_failure() -> None:
    dispatcher = make({"a": FakeUpstream("a", UnavailableError("x")), "b": FakeUpstream("b")})
    for _ in range(5):
        await dispatcher.infer("m", b"x")
    assert all(e.outstanding == 0 for e in dispatcher.pool.endpoints.values())


async def test_an_empty_pool_is_unavailable_not_an_unknown_model() -> None:
    with pytest.raises(UnavailableError, match="no endpoint is registered in region 'r'"):
        await make({}).infer("m", b"x")


def regional(regions: dict[str, str], models: dict[str, tuple[str, ...]]) -> RegionalDispatch[bytes]:
    """Endpoints by id -> region; each serves models[id]."""
    pool: EndpointPool[FakeUpstream] = EndpointPool(lambda s: FakeUpstream(s.member.id), lambda u: None)
    pool.sync([MemberState(Member(id=n, service="edge", address=f"{n}:1", region=r, models=frozenset(models[n])),
                           Load(), 0.0, 0.0) for n, r in regions.items()])
    routing: RegionalDispatch[bytes] = RegionalDispatch(pool, rng=random.Random(3), clock=Clock())  # type: ignore[arg-type]
    routing.sync()
    return routing


async def test_a_region_routes_only_to_its_endpoints_sharing_their_load() -> None:
    routing = regional({"a": "eu", "b": "us", "c": "us"}, {"a": ("m",), "b": ("m",), "c": ("n",)})
    assert sorted(routing.regions) == ["eu", "us"]
    assert {(await routing.dispatcher("us").infer("m", b"x")).endpoint for _ in range(10)} == {"b"}
    assert {(await routing.dispatcher("").infer("m", b"x")).endpoint for _ in range(20)} == {"a", "b"}
    assert routing.dispatcher("us").pool.endpoints["b"] is routing.pool.endpoints["b"]  # one load count
    with pytest.raises(ModelNotFoundError, match="not served in region 'eu'; available: \\['m'\\]"):
        await routing.dispatcher("eu").infer("n", b"x")


def test_an_unknown_region_is_not_found_naming_the_known_ones() -> None:
    routing = regional({"a": "eu"}, {"a": ("m",)})
    with pytest.raises(FoglineError, match=r"region 'us' is unknown; known regions: \['eu'\]") as info:
        routing.dispatcher("us")
    assert info.value.code is ErrorCode.NOT_FOUND
    routing.pool.sync([])
    routing.sync()
    assert routing.regions == {}


async def test_admission_control_skips_full_endpoints_and_refuses_when_all_are_full() -> None:
    dispatcher = make({"a": FakeUpstream("a"), "b": FakeUpstream("b")}, max_outstanding=2)
    dispatcher.pool.endpoints["a"].outstanding = 2
    assert {(await dispatcher.infer("m", b"x")).endpoint for _ in range(10)} == {"b"}
    dispatcher.pool.endpoints["b"].outstanding = 2
    with pytest.raises(OverloadedError, match="every endpoint holding 'm' in region 'r' has 2 requests outstanding") as info:
        await dispatcher.infer("m", b"x")
    assert info.value.retry_after_s == pytest.approx(0.1)


# --- one attempt: what its breaker hears --------------------------------------------------------------

def one_failure_opens() -> CircuitBreaker:
    return CircuitBreaker(BREAKER, clock=Clock())


async def run_attempt(breaker: CircuitBreaker, error: BaseException | None, *, attempt_timeout_s: float | None = None,
                      remaining_s: float = 1.0) -> list[float]:
    """One attempt whose call fails with ``error`` (None: answers); the timeouts the call was given."""
    timeouts: list[float] = []

    async def call(timeout_s: float) -> bytes:
        timeouts.append(timeout_s)
        if error is not None:
            raise error
        return b"ok"

    permit = breaker.allow()
    assert permit is not None
    assert await attempt(breaker, permit, call, remaining_s=remaining_s, attempt_timeout_s=attempt_timeout_s,
                         peer="a") == b"ok"
    return timeouts


@pytest.mark.parametrize("error", [UnavailableError("down"), OverloadedError("full"),
                                   DeadlineExceededError("hung")])
async def test_an_attempt_that_may_succeed_elsewhere_counts_against_the_peer(error: FoglineError) -> None:
    breaker = one_failure_opens()
    with pytest.raises(RetryElsewhere) as caught:
        await run_attempt(breaker, error, attempt_timeout_s=0.1)  # a DEADLINE_EXCEEDED of our attempt timeout
    assert caught.value.error is error and breaker.state is BreakerState.OPEN


@pytest.mark.parametrize("error", [InvalidInputError("bad shape"), ModelNotFoundError("no such model")])
async def test_an_attempt_the_peer_answered_is_final_and_a_success_for_its_breaker(error: FoglineError) -> None:
    breaker = one_failure_opens()
    with pytest.raises(type(error)):
        await run_attempt(breaker, error)
    assert breaker.closed and breaker.snapshot()["consecutive_failures"] == 0


@pytest.mark.parametrize("error", [DeadlineExceededError("the caller's"), PayloadTooLargeError("too large"),
                                   asyncio.CancelledError(), RuntimeError("a bug")])
async def test_an_attempt_that_says_nothing_about_the_peer_hands_its_permit_back(error: BaseException) -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=1, half_open_probes=1, open_jitter=0.0), clock=clock)
    permit = breaker.allow()
    assert permit is not None
    breaker.record(permit, Outcome.FAILURE, 0.01)
    clock.now += 60  # half-open: one probe slot
    with pytest.raises(type(error)):
        await run_attempt(breaker, error)  # no attempt timeout: a DEADLINE_EXCEEDED is the caller's own
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["probes_in_flight"], snapshot["probe_successes"]) == ("half_open", 0, 0)
    assert breaker.accepting  # the probe slot is free again, and the probe counted neither way


async def test_the_callers_deadline_is_reported_as_such_naming_the_peer() -> None:
    with pytest.raises(DeadlineExceededError, match="deadline passed waiting for a: no answer"):
        await run_attempt(one_failure_opens(), DeadlineExceededError("no answer"), attempt_timeout_s=2.0)


async def test_an_attempt_gets_our_timeout_only_when_it_is_shorter_than_what_is_left() -> None:
    assert await run_attempt(one_failure_opens(), None, attempt_timeout_s=0.2, remaining_s=1.0) == [0.2]
    assert await run_attempt(one_failure_opens(), None, attempt_timeout_s=2.0, remaining_s=1.0) == [1.0]
    assert await run_attempt(one_failure_opens(), None, attempt_timeout_s=None, remaining_s=1.0) == [1.0]
