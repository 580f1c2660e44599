"""Send a request to one endpoint of a pool, and to another when that one cannot take it.

Inference is idempotent, so a request that failed on an endpoint with UNAVAILABLE (the peer is down
or draining), RESOURCE_EXHAUSTED (its queue is full) or DEADLINE_EXCEEDED on an attempt timeout of
ours (it hangs) is retried on another endpoint holding the model, within the caller's deadline and
the dispatcher's retry budget (``fogline.errors.RETRYABLE_CODES``; one attempt is
:func:`fogline.core.routing.attempt.attempt`). Every endpoint has a circuit breaker
(``Endpoint.breaker``) that sees each attempt's outcome; the pool's ejection limits decide which
endpoints a request may go to (DESIGN.md §5).

Each attempt is a CLIENT span (``fogline.attempt``: the endpoint, the attempt's number, its outcome)
when tracing is on; the cloud master's regional dispatch adds a ``fogline.route`` span around them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from fogline.core.observe.spans import CLIENT, PROCESS_SPANS, Attributes, Spans, in_span
from fogline.core.routing.attempt import RetryElsewhere, attempt
from fogline.core.routing.breaker import CircuitBreaker, Permit
from fogline.core.routing.pool import Endpoint, EndpointPool, power_of_two_choices
from fogline.core.routing.resilience import EjectionLimits, RetryBudget, RetryBudgetSettings
from fogline.errors import (
    DeadlineExceededError,
    ErrorCode,
    FoglineError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
    echo_name,
    echo_names,
)

Req = TypeVar("Req", contravariant=True)
Resp = TypeVar("Resp", covariant=True)
R = TypeVar("R")

ATTEMPT_SPAN = "fogline.attempt"
ROUTE_SPAN = "fogline.route"


class Upstream(Protocol[Req, Resp]):
    """An endpoint's client: one call, failing with a FoglineError."""

    async def infer(self, request: Req, timeout_s: float | None) -> Resp: ...


@dataclass(frozen=True, slots=True)
class Dispatched(Generic[R]):
    """An answer, the endpoint that gave it, and the attempts it took."""

    response: R
    endpoint: str
    attempts: int


@dataclass(frozen=True, kw_only=True)
class DispatchSettings:
    """How many attempts a request gets, how long each may take, and what one endpoint may hold."""

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
                 on_attempt: Callable[[str, str], None] | None = None, budget: RetryBudget | None = None,
                 spans: Spans = PROCESS_SPANS) -> None:
        self.pool = pool
        self.scope = scope
        self.settings = settings
        self._rng = rng or random.Random()
        self._clock = clock
        self._on_attempt = on_attempt
        self.budget = budget or RetryBudget(settings.retry_budget, clock=clock)
        self._spans = spans

    def choose(self, model: str, session: str | None, tried: set[str],
               version: str = "") -> tuple[Endpoint[Upstream[bytes, R]], Permit] | None:
        """An endpoint not yet ``tried`` (holding ``version`` of ``model``, if given) that the ejection
        limits and its breaker let this request go to, with the breaker's permit; None if there is none."""
        candidates = self.pool.for_version(model, version) if version else self.pool.for_model(model)
        if not candidates:
            self._not_held(model, version)
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

    def _not_held(self, model: str, version: str) -> None:
        """Why no endpoint can take ``model`` (at ``version``): UNAVAILABLE with none registered, else
        NOT_FOUND naming the models (or that model's versions) served."""
        if not self.pool.endpoints:
            raise UnavailableError(f"no endpoint is registered in {self.scope}; none can serve {model!r}")
        if version and self.pool.for_model(model):
            raise ModelNotFoundError(f"model {echo_name(model)} version {echo_name(version)} is not loaded in "
                                     f"{self.scope}; loaded versions: {echo_names(self.pool.versions(model))}")
        raise ModelNotFoundError(f"model {echo_name(model)} is not served in {self.scope}; "
                                 f"available: {echo_names(self.pool.models())}")

    def holds_version(self, model: str, version: str) -> bool:
        """Some endpoint reports ``version`` of ``model`` loaded."""
        return any((model, version) in e.state.member.versions for e in self.pool.for_model(model))

    def _pick(self, model: str, session: str | None,
              endpoints: list[Endpoint[Upstream[bytes, R]]]) -> Endpoint[Upstream[bytes, R]]:
        if session:
            by_id = {e.id: e for e in endpoints}
            for mid in self.pool.ring(model).preference(session):
                if mid in by_id:
                    return by_id[mid]
        return power_of_two_choices(endpoints, self._rng)

    def holds(self, model: str) -> bool:
        """Some endpoint holds ``model``."""
        return bool(self.pool.for_model(model))

    def holding(self, model: str) -> list[Endpoint[Upstream[bytes, R]]]:
        """The endpoints holding ``model``."""
        return self.pool.for_model(model)

    def holders(self, model: str) -> list[Upstream[bytes, R]]:
        """The upstreams holding ``model``, least loaded first: the order to ask them about it."""
        return [e.upstream for e in sorted(self.pool.for_model(model), key=Endpoint.load)]

    def usable(self, model: str) -> list[Endpoint[Upstream[bytes, R]]]:
        """The endpoints holding ``model`` whose circuit takes calls."""
        return [e for e in self.pool.for_model(model) if takes_calls(e)]

    def reachable(self, model: str | None = None) -> bool:
        """Some endpoint (holding ``model``, if given) has a circuit that takes calls."""
        endpoints = self.pool.endpoints.values() if model is None else self.pool.for_model(model)
        return any(takes_calls(e) for e in endpoints)

    def models(self) -> list[str]:
        return self.pool.models()

    @property
    def empty(self) -> bool:
        """No endpoint is registered."""
        return not self.pool.endpoints

    async def infer(self, model: str, request: bytes, *, session: str | None = None,
                    deadline: float | None = None, version: str = "") -> Dispatched[R]:
        """Send ``request`` for ``model`` to an endpoint (one that holds ``version``, if given), and to
        others while the failures are retryable (:class:`RetryElsewhere`), the attempts, the deadline
        and the retry budget allow."""
        if deadline is None:
            deadline = self._clock() + self.settings.default_timeout_s
        tried: set[str] = set()
        last: FoglineError | None = None
        self.budget.record_request()
        for attempt_no in range(1, self.settings.max_attempts + 1):
            chosen = self.choose(model, session, tried, version)
            if chosen is None:
                break
            endpoint, permit = chosen
            remaining = self._admit(endpoint.breaker, permit, model, attempt_no, deadline, last)
            try:
                if self._spans.enabled:
                    response = await self._traced_attempt(endpoint, permit, request, remaining, model, attempt_no)
                else:
                    response = await self._attempt(endpoint, permit, request, remaining)
                return Dispatched(response, endpoint.id, attempt_no)
            except RetryElsewhere as retry:
                self._check_deadline(retry.error, model, attempt_no, deadline)
                tried.add(endpoint.id)
                last = retry.error
        if last is not None:
            raise type(last)(f"{model!r} failed on {len(tried)} endpoints in {self.scope}; last: {last}")
        raise UnavailableError(f"no endpoint for {model!r} in {self.scope} can take the request "
                               f"(their circuits are open)")

    def _admit(self, breaker: CircuitBreaker, permit: Permit, model: str, attempt_no: int, deadline: float,
               last: FoglineError | None) -> float:
        """What is left of ``deadline`` for attempt ``attempt_no``; when nothing is, or a retry finds the
        budget spent, ``permit`` goes back and the request fails."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            breaker.release(permit)
            raise DeadlineExceededError(f"deadline passed after {attempt_no - 1} attempts for {model!r}")
        if attempt_no > 1 and not self.budget.try_spend():
            breaker.release(permit)
            assert last is not None
            raise type(last)(f"{model!r} failed in {self.scope} and the retry budget is spent; last: {last}")
        return remaining

    def _check_deadline(self, err: FoglineError, model: str, attempt_no: int, deadline: float) -> None:
        """A retryable ``err`` is final once the deadline has passed."""
        if self._clock() < deadline:
            return
        if err.code is ErrorCode.DEADLINE_EXCEEDED:
            raise err from None
        raise DeadlineExceededError(f"deadline passed after {attempt_no} attempts for {model!r}; "
                                    f"last: {err}") from None

    async def _traced_attempt(self, endpoint: Endpoint[Upstream[bytes, R]], permit: Permit, request: bytes,
                              remaining: float, model: str, attempt_no: int) -> R:
        """:meth:`_attempt` in a CLIENT span: the upstream sends the span's context with the request."""
        attributes: Attributes = {"fogline.endpoint": endpoint.id, "fogline.attempt": attempt_no,
                                  "fogline.model": model, "fogline.scope": self.scope}
        return await in_span(self._spans, ATTEMPT_SPAN, self._attempt(endpoint, permit, request, remaining),
                             attributes, kind=CLIENT)

    async def _attempt(self, endpoint: Endpoint[Upstream[bytes, R]], permit: Permit, request: bytes,
                       remaining: float) -> R:
        """One call (:func:`attempt`), counted in the endpoint's outstanding requests and reported."""
        endpoint.outstanding += 1
        try:
            response = await attempt(endpoint.breaker, permit, partial(endpoint.upstream.infer, request),
                                     remaining_s=remaining, attempt_timeout_s=self.settings.attempt_timeout_s,
                                     peer=endpoint.id, clock=self._clock)
        except RetryElsewhere as retry:
            self._note(endpoint.id, retry.error.code.value)
            raise
        except FoglineError as err:
            self._note(endpoint.id, err.code.value)
            raise
        finally:
            endpoint.outstanding -= 1
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
                 on_attempt: Callable[[str, str], None] | None = None, spans: Spans = PROCESS_SPANS) -> None:
        self.pool = pool
        self._settings = settings
        self._rng = rng or random.Random()
        self._clock = clock
        self._on_attempt = on_attempt
        self._spans = spans
        self._budget = RetryBudget(settings.retry_budget, clock=clock)  # one budget for every region's traffic
        self.any: Dispatcher[R] = self._dispatcher(pool, "any region")
        self.regions: dict[str, Dispatcher[R]] = {}

    def _dispatcher(self, pool: EndpointPool[Upstream[bytes, R]], scope: str) -> Dispatcher[R]:
        return Dispatcher(pool, scope, self._settings, rng=self._rng, clock=self._clock,
                          on_attempt=self._on_attempt, budget=self._budget, spans=self._spans)

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


    def knows(self, model: str) -> bool:
        """Some region holds ``model``."""
        return self.any.holds(model)

    def holders(self, model: str) -> list[Upstream[bytes, R]]:
        """The endpoints holding ``model`` in any region, least loaded first; NOT_FOUND naming what is served."""
        holders = self.any.holders(model)
        if not holders:
            raise ModelNotFoundError(f"model {echo_name(model)} is not served in any region; "
                                     f"available: {echo_names(self.pool.models())}")
        return holders

    def infer(self, model: str, request: bytes, *, region: str | None = None, session: str | None = None,
              deadline: float | None = None) -> Coroutine[Any, Any, tuple[Dispatched[R], str]]:
        """Dispatch in ``region`` (any region when empty): the answer, and the region that served it."""
        # NOTE: a plain method returning the coroutine that dispatches: no coroutine of its own on the hot path.
        if self._spans.enabled:
            return self._traced_infer(model, request, region, session, deadline)
        return self._infer(model, request, region, session, deadline)

    async def _infer(self, model: str, request: bytes, region: str | None, session: str | None,
                     deadline: float | None) -> tuple[Dispatched[R], str]:
        done = await self.dispatcher(region).infer(model, request, session=session, deadline=deadline)
        endpoint = self.pool.endpoints.get(done.endpoint)
        return done, endpoint.state.member.region if endpoint is not None else region or ""

    async def _traced_infer(self, model: str, request: bytes, region: str | None, session: str | None,
                            deadline: float | None) -> tuple[Dispatched[R], str]:
        """:meth:`_infer` in a ``fogline.route`` span: the region asked for and the one that served, the
        edge master (``fogline.node``) and the attempts."""
        return await in_span(self._spans, ROUTE_SPAN, self._infer(model, request, region, session, deadline),
                             {"fogline.model": model, "fogline.region.requested": region or ""},
                             describe=lambda served: {"fogline.region": served[1], "fogline.node": served[0].endpoint,
                                                      "fogline.attempts": served[0].attempts})


def takes_calls(endpoint: Endpoint[Any]) -> bool:
    """The endpoint's circuit takes calls now: closed (the cheap check first), or half-open with a probe
    slot free."""
    return endpoint.breaker.closed or endpoint.breaker.accepting


def _in_region(region: str) -> Callable[[Endpoint[Any]], bool]:
    return lambda endpoint: endpoint.state.member.region == region
