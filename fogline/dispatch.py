"""Send a request to one endpoint of a pool, and to another when that one cannot take it.

Inference is idempotent, so a request that failed on an endpoint with UNAVAILABLE (the peer is down
or draining) or RESOURCE_EXHAUSTED (its queue is full) is retried on another endpoint holding the
model, within the caller's deadline. An endpoint that failed at the transport is skipped for
``cooldown_s`` while others can serve (the circuit breaker of DESIGN.md §5 replaces this).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from fogline.errors import (
    DeadlineExceededError,
    ErrorCode,
    FoglineError,
    ModelNotFoundError,
    UnavailableError,
)
from fogline.routing import Endpoint, EndpointPool, power_of_two_choices

Req = TypeVar("Req", contravariant=True)
Resp = TypeVar("Resp", covariant=True)
R = TypeVar("R")

RETRYABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.RESOURCE_EXHAUSTED})


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
    cooldown_s: float = 2.0
    """How long an endpoint that failed at the transport is passed over while others can serve."""
    default_timeout_s: float = 30.0
    """Deadline for a request whose caller set none: nothing waits forever."""


class Dispatcher(Generic[R]):
    """Routes a model's requests over an :class:`EndpointPool` of upstreams."""

    def __init__(self, pool: EndpointPool[Upstream[bytes, R]], scope: str,
                 settings: DispatchSettings = DispatchSettings(), *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_attempt: Callable[[str, str], None] | None = None) -> None:
        self.pool = pool
        self.scope = scope
        self.settings = settings
        self._rng = rng or random.Random()
        self._clock = clock
        self._on_attempt = on_attempt

    def choose(self, model: str, session: str | None, tried: set[str]) -> Endpoint[Upstream[bytes, R]] | None:
        candidates = self.pool.for_model(model)
        if not candidates and not self.pool.endpoints:
            raise UnavailableError(f"no endpoint is registered in {self.scope}; none can serve {model!r}")
        if not candidates:
            raise ModelNotFoundError(
                f"model {model!r} is not served in {self.scope}; available: {self.pool.models()}")
        now = self._clock()
        fresh = [e for e in candidates if e.id not in tried]
        healthy = [e for e in fresh if e.cooldown_until <= now] or fresh  # none healthy: try them all
        if not healthy:
            return None
        if session:
            by_id = {e.id: e for e in healthy}
            for mid in self.pool.ring(model).preference(session):
                if mid in by_id:
                    return by_id[mid]
        return power_of_two_choices(healthy, self._rng)

    async def infer(self, model: str, request: bytes, *, session: str | None = None,
                    deadline: float | None = None) -> Dispatched[R]:
        if deadline is None:
            deadline = self._clock() + self.settings.default_timeout_s
        tried: set[str] = set()
        last: FoglineError | None = None
        for attempt in range(1, self.settings.max_attempts + 1):
            endpoint = self.choose(model, session, tried)
            if endpoint is None:
                break
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise DeadlineExceededError(f"deadline passed after {attempt - 1} attempts for {model!r}")
            endpoint.outstanding += 1
            try:
                response = await endpoint.upstream.infer(request, remaining)
            except FoglineError as err:
                self._note(endpoint.id, err.code.value)
                if err.code not in RETRYABLE:
                    raise
                if err.code is ErrorCode.UNAVAILABLE:
                    endpoint.cooldown_until = self._clock() + self.settings.cooldown_s
                tried.add(endpoint.id)
                last = err
                continue
            finally:
                endpoint.outstanding -= 1
            self._note(endpoint.id, "OK")
            return Dispatched(response, endpoint.id, attempt)
        if last is not None:
            raise type(last)(f"{model!r} failed on {len(tried)} endpoints in {self.scope}; last: {last}")
        raise UnavailableError(f"no endpoint for {model!r} in {self.scope} can take the request")

    def _note(self, endpoint: str, code: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(endpoint, code)


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
        self.any: Dispatcher[R] = self._dispatcher(pool, "any region")
        self.regions: dict[str, Dispatcher[R]] = {}

    def _dispatcher(self, pool: EndpointPool[Upstream[bytes, R]], scope: str) -> Dispatcher[R]:
        return Dispatcher(pool, scope, self._settings, rng=self._rng, clock=self._clock,
                          on_attempt=self._on_attempt)

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
            raise FoglineError(f"region {region!r} is unknown; known regions: {sorted(self.regions)}",
                               code=ErrorCode.NOT_FOUND)
        return dispatcher


def _in_region(region: str) -> Callable[[Endpoint[Any]], bool]:
    return lambda endpoint: endpoint.state.member.region == region
