"""One call to one endpoint under its circuit breaker's permit: the attempt of a retry loop.

The SDK's client (over its endpoints) and the masters' dispatchers (over a pool) both try a request
on one endpoint after another; each try is this::

    permit = breaker.allow()
    try:
        response = await attempt(breaker, permit, call, remaining_s=..., attempt_timeout_s=..., peer=...)
    except RetryElsewhere as retry:
        ...  # retry.error: the endpoint is down, full or hung; try another one
    # any FoglineError raised as such is final

The breaker hears what the call says about the peer and nothing else: an error by its code
(``Outcome.of``), with its latency; a call that ran out of the caller's own deadline, a payload
over a message limit, or a call abandoned by cancellation hand the permit back unjudged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from fogline.core.routing.breaker import CircuitBreaker, Clock, Outcome, Permit
from fogline.errors import RETRYABLE_CODES, DeadlineExceededError, ErrorCode, FoglineError, PayloadTooLargeError

T = TypeVar("T")


class RetryElsewhere(Exception):
    """The attempt failed in a way another endpoint may not: ``error`` is what this one said."""

    def __init__(self, error: FoglineError) -> None:
        super().__init__(str(error))
        self.error = error


def _timeout(remaining_s: float, attempt_timeout_s: float | None) -> tuple[float, bool]:
    """The timeout of one attempt, and whether it is ours: ``attempt_timeout_s`` when it is shorter than
    what is left of the caller's deadline, that remainder otherwise."""
    if attempt_timeout_s is not None and attempt_timeout_s < remaining_s:
        return attempt_timeout_s, True
    return remaining_s, False


async def attempt(breaker: CircuitBreaker, permit: Permit, call: Callable[[float], Awaitable[T]], *,
                  remaining_s: float, attempt_timeout_s: float | None, peer: str,
                  clock: Clock = time.monotonic) -> T:
    """``call(timeout_s)`` under ``permit``, its outcome told to ``breaker``.

    Raises :class:`RetryElsewhere` for an error of :data:`RETRYABLE_CODES` (a DEADLINE_EXCEEDED on an
    attempt timeout of ours included), and any other FoglineError as final: a DEADLINE_EXCEEDED of
    the caller's own deadline (as "deadline passed waiting for ``peer``") and a PayloadTooLargeError
    say nothing about the peer, so they release the permit rather than count against it.
    """
    timeout_s, ours = _timeout(remaining_s, attempt_timeout_s)
    started = clock()
    try:
        result = await call(timeout_s)
    except FoglineError as err:
        _judge(breaker, permit, err, ours, clock() - started, peer)
    except BaseException:  # cancelled by our own caller, or a bug: no verdict on the peer
        breaker.release(permit)
        raise
    breaker.record(permit, Outcome.SUCCESS, clock() - started)
    return result


def _judge(breaker: CircuitBreaker, permit: Permit, err: FoglineError, ours: bool, latency_s: float,
           peer: str) -> NoReturn:
    """Tell ``breaker`` what ``err`` says about the peer, and raise what the caller should see."""
    if err.code is ErrorCode.DEADLINE_EXCEEDED and not ours:
        breaker.release(permit)
        raise DeadlineExceededError(f"deadline passed waiting for {peer}: {err}") from None
    if isinstance(err, PayloadTooLargeError):  # the caller's to fix: final, and no fault of the peer
        breaker.release(permit)
        raise err
    breaker.record(permit, Outcome.of(err.code), latency_s)
    if err.code in RETRYABLE_CODES:
        raise RetryElsewhere(err) from None
    raise err
