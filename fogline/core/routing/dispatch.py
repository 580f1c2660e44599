"""Send a request to one endpoint of a pool, and to another when that one cannot take it.

Inference is idempotent, so a request that failed on an endpoint with UNAVAILABLE (the peer is down
or draining), RESOURCE_EXHAUSTED (its queue is full) or DEADLINE_EXCEEDED on an attempt timeout of
ours (it hangs) is retried on another endpoint holding the model, within the caller's deadline and
the dispatcher's retry budget. Every endpoint has a circuit breaker (``Endpoint.breaker``) that
sees each attempt's outcome; the pool's ejection limits decide which endpoints a request may go to
(DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from fogline.core.routing.breaker import Outcome, Permit
from fogline.core.routing.pool import Endpoint, EndpointPool, power_of_two_choices
from fogline.core.routing.resilience import EjectionLimits, RetryBudget, RetryBudgetSettings
from fogline.errors import (
    DeadlineExceededError,
    ErrorCode,
    FoglineError,
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    UnavailableError,
    echo_name,
    echo_names,
)

Req = TypeVar("Req", contravariant=True)
Resp = TypeVar("Resp", covariant=True)
R = TypeVar("R")

RETRYABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.DEADLINE_EXCEEDED})


class Upstream(Protocol[Req, Resp]):
    async def infer(self, request: Req, timeout_s: float | None) -> Resp: ...


@dataclass(frozen=True, slots=True)
class Dispatched(Generic[R]):
    response: R
    endpoint: str
    attempts: int


@dataclass(frozen=True, kw_only=True)
class DispatchSettings:
    max_attempts: int = 3
    """Endpoints one request may try (the first plus retries)."""
    attempt_timeout_s: float | None = 1.0
    """The longest one attempt may wait before it is abandoned and retried elsewhere, when the
    caller's deadline leaves time for that (Envoy's per_try_timeout); None: the caller's deadline
    only. A hung peer then costs a request this long, not its whole deadline."""
    default_timeout_s: float = 30.0
    """Deadline for a request whose caller set none: nothing waits forever."""
    max_outstanding: int | None = None
    """Requests of ours one endpoint may have at once (admission control); when every endpoint
    holding the model has this many, RESOURCE_EXHAUSTED with a retry hint. None: no limit here."""
    overload_retry_after_s: float = 0.1
    """The retry hint of that RESOURCE_EXHAUSTED."""
    ejection: EjectionLimits = field(default_factory=EjectionLimits)
    """How much of a pool open breakers may take out of routing."""
    retry_budget: RetryBudgetSettings = field(default_factory=RetryBudgetSettings)
    """Retries as a share of live traffic, so that a failing pool is not buried in them."""


class Dispatcher(Generic[R]):
    """Routes a model's requests over an :class:`EndpointPool` of upstreams."""

    def __init__(self, pool: EndpointPool[Upstream[bytes, R]], scope: str,
                 settings: DispatchSettings = DispatchSettings(), *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_attempt: Callable[[str, str], None] | None = None, budget: RetryBudget | None = None) -> None:
        self.pool = pool
        self.scope = scope
        self.settings = settings
        self._rng = rng or random.Random()
        self._clock = clock
        self._on_attempt = on_attempt
        self.budget = budget or RetryBudget(settings.retry_budget, clock=clock)

    def choose(self, model: str, session: str | None,
               tried: set[str]) -> tuple[Endpoint[Upstream[bytes, R]], Permit] | None:
        """An endpoint not yet ``tried`` that the ejection limits and its breaker let this request
        go to, with the breaker's permit; None if there is none."""
        candidates = self.pool.for_model(model)
        if not candidates and not self.pool.endpoints:
            raise UnavailableError(f"no endpoint is registered in {self.scope}; none can serve {model!r}")
        if not candidates:
            raise ModelNotFoundError(f"model {echo_name(model)} is not served in {self.scope}; "
                                     f"available: {echo_names(self.pool.models())}")
        limit = self.settings.max_outstanding
        fresh = [e for e in candidates if e.id not in tried and (limit is None or e.outstanding < limit)]
        if not fresh and limit is not None and any(e.outstanding >= limit for e in candidates):
            retry = self.settings.overload_retry_after_s
            raise OverloadedError(f"every endpoint holding {model!r} in {self.scope} has {limit} requests "
                                  f"outstanding (the limit); retry after {retry:g} s", retry_after_s=retry)
        if all(e.breaker.closed for e in fresh):  # the common case: nothing to eject
            left, forced = fresh, frozenset[str]()
        else:
            plan = self.settings.ejection.routable([e.breaker.health(e.id) for e in fresh])
            routable = set(plan.ids)
            left, forced = [e for e in fresh if e.id in routable], plan.forced
        while left:
            endpoint = self._pick(model, session, left)
            permit = endpoint.breaker.allow(force=endpoint.id in forced)
            if permit is not None:
                return endpoint, permit
            left.remove(endpoint)
        return None

    def _pick(self, model: str, session: str | None,
              endpoints: list[Endpoint[Upstream[bytes, R]]]) -> Endpoint[Upstream[bytes, R]]:
        if session:
            by_id = {e.id: e for e in endpoints}
            for mid in self.pool.ring(model).preference(session):
                if mid in by_id:
                    return by_id[mid]
        return power_of_two_choices(endpoints, self._rng)

    async def infer(self, model: str, request: bytes, *, session: str | None = None,
                    deadline: float | None = None) -> Dispatched[R]:
        if deadline is None:
            deadline = self._clock() + self.settings.default_timeout_s
        tried: set[str] = set()
        last: FoglineError | None = None
        self.budget.record_request()
        for attempt in range(1, self.settings.max_attempts + 1):
            chosen = self.choose(model, session, tried)
            if chosen is None:
                break
            endpoint, permit = chosen
            remaining = deadline - self._clock()
            if remaining <= 0:
                endpoint.breaker.release(permit)
                raise DeadlineExceededError(f"deadline passed after {attempt - 1} attempts for {model!r}")
            if attempt > 1 and not self.budget.try_spend():
                endpoint.breaker.release(permit)
                assert last is not None
                raise type(last)(f"{model!r} failed in {self.scope} and the retry budget is spent; last: {last}")
            try:
                response = await self._attempt(endpoint, permit, request, remaining)
            except FoglineError as err:
                if err.code not in RETRYABLE or isinstance(err, PayloadTooLargeError):
                    raise
                if self._clock() >= deadline:
                    if err.code is ErrorCode.DEADLINE_EXCEEDED:
                        raise
                    raise DeadlineExceededError(f"deadline passed after {attempt} attempts for {model!r}; "
                                                f"last: {err}") from None
                tried.add(endpoint.id)
                last = err
                continue
            return Dispatched(response, endpoint.id, attempt)
        if last is not None:
            raise type(last)(f"{model!r} failed on {len(tried)} endpoints in {self.scope}; last: {last}")
        raise UnavailableError(f"no endpoint for {model!r} in {self.scope} can take the request "
                               f"(their circuits are open)")

    async def _attempt(self, endpoint: Endpoint[Upstream[bytes, R]], permit: Permit, request: bytes,
                       remaining: float) -> R:
        """One call, its outcome told to the endpoint's breaker. A DEADLINE_EXCEEDED of the caller's own
        deadline is final and says nothing about the peer; one of our attempt timeout is a retryable failure."""
        per_try = self.settings.attempt_timeout_s
        ours = per_try is not None and per_try < remaining
        timeout = per_try if ours else remaining
        breaker = endpoint.breaker
        endpoint.outstanding += 1
        started = self._clock()
        try:
            response = await endpoint.upstream.infer(request, timeout)
        except FoglineError as err:
            if err.code is ErrorCode.DEADLINE_EXCEEDED and not ours:
                breaker.release(permit)
                self._note(endpoint.id, err.code.value)
                raise DeadlineExceededError(f"deadline passed waiting for {endpoint.id}: {err}") from None
            if isinstance(err, PayloadTooLargeError):  # the caller's to fix: final, and no fault of the peer
                breaker.release(permit)
                self._note(endpoint.id, err.code.value)
                raise
            breaker.record(permit, Outcome.of(err.code), self._clock() - started)
            self._note(endpoint.id, err.code.value)
            raise
        except asyncio.CancelledError:
            breaker.release(permit)
            raise
        finally:
            endpoint.outstanding -= 1
        breaker.record(permit, Outcome.SUCCESS, self._clock() - started)
        self._note(endpoint.id, "OK")
        return response

    def _note(self, endpoint: str, code: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(endpoint, code)

    def snapshot(self) -> dict[str, Any]:
        """Retry budget and breakers for ``/v1/status``."""
        plan = self.settings.ejection.routable([e.breaker.health(e.id) for e in self.pool.endpoints.values()])
        return {"retry_budget": self.budget.snapshot(), "ejected": list(plan.ejected), "panic": plan.panic}


class RegionalDispatch(Generic[R]):
    """Routing over a pool whose endpoints each serve a region (the cloud master's edge masters): one
    :class:`Dispatcher` across all regions and one per region, over views sharing the pool's
    endpoints, so a request pinned to a region costs one dict lookup more than an unpinned one."""

    def __init__(self, pool: EndpointPool[Upstream[bytes, R]], settings: DispatchSettings = DispatchSettings(),
                 *, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 on_attempt: Callable[[str, str], None] | None = None) -> None:
        self.pool = pool
        self._settings = settings
        self._rng = rng or random.Random()
        self._clock = clock
        self._on_attempt = on_attempt
        self._budget = RetryBudget(settings.retry_budget, clock=clock)  # one budget for every region's traffic
        self.any: Dispatcher[R] = self._dispatcher(pool, "any region")
        self.regions: dict[str, Dispatcher[R]] = {}

    def _dispatcher(self, pool: EndpointPool[Upstream[bytes, R]], scope: str) -> Dispatcher[R]:
        return Dispatcher(pool, scope, self._settings, rng=self._rng, clock=self._clock,
                          on_attempt=self._on_attempt, budget=self._budget)

    def sync(self) -> None:
        """Follow the pool's membership; call after each ``pool.sync``."""
        regions = sorted({e.state.member.region for e in self.pool.endpoints.values()})
        self.regions = {r: self._dispatcher(self.pool.view(_in_region(r)), f"region {r!r}") for r in regions}

    def dispatcher(self, region: str | None) -> Dispatcher[R]:
        """The dispatcher for ``region`` (any region when empty); NOT_FOUND naming the known ones."""
        if not region:
            return self.any
        dispatcher = self.regions.get(region)
        if dispatcher is None:
            raise FoglineError(f"region {echo_name(region)} is unknown; known regions: "
                               f"{echo_names(sorted(self.regions))}", code=ErrorCode.NOT_FOUND)
        return dispatcher


def _in_region(region: str) -> Callable[[Endpoint[Any]], bool]:
    return lambda endpoint: endpoint.state.member.region == region
