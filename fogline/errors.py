"""The one error type of Fogline's core, and its codes.

Every failure a caller can act on is a :class:`FoglineError` carrying an :class:`ErrorCode`.
The core never imports a protocol library: each adapter maps the code straight to its own
status (``fogline.adapters.grpc.status`` for gRPC, ``fogline.adapters.http`` for HTTP).

    FoglineError
    ├── ModelNotFoundError      NOT_FOUND           unknown model or version
    ├── InvalidInputError       INVALID_ARGUMENT    bad shape, datatype, bytes or parameters
    ├── UnavailableError        UNAVAILABLE         no healthy endpoint, peer down, not ready, draining
    ├── OverloadedError         RESOURCE_EXHAUSTED  queue full or payload too large; has a retry hint
    │   └── PayloadTooLargeError                    over a message limit: the caller's to fix, no peer's fault
    ├── DeadlineExceededError   DEADLINE_EXCEEDED   the caller's deadline passed
    ├── UnauthenticatedError    UNAUTHENTICATED     no credential, or a wrong one (API key, join token)
    ├── PermissionDeniedError   PERMISSION_DENIED   a good credential that may not do this
    ├── ConflictError           FAILED_PRECONDITION not now: the state forbids it (a rollout already runs)
    └── InternalError           INTERNAL            a bug or a runtime failure

:class:`PortInUseError` is not a request's error: a process could not listen where it was told to.

A message that repeats a name or a list of names bounds it with :func:`echo_name` / :func:`echo_names`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class ErrorCode(enum.Enum):
    """What went wrong, independent of protocol: each adapter maps a code straight to its own status.
    The values are the names of the gRPC status codes they stand for."""

    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"


# NOTE: only these say something about the peer's health; a client's bad input never does.
PEER_FAILURE_CODES = frozenset(
    {ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED}
)
RETRYABLE_CODES = PEER_FAILURE_CODES
"""Codes worth trying another endpoint for: the peer is down, full or (on an attempt timeout of ours)
hung. The same set: an answer that says nothing against the peer would be the same from any other.
A :class:`PayloadTooLargeError` is the exception (see ``fogline.core.routing.attempt``)."""


class FoglineError(Exception):
    """A failure with a code a protocol adapter can map, and a message that says what to fix."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value}: {self.message!r})"


class ModelNotFoundError(FoglineError):
    """An unknown model or version."""

    code = ErrorCode.NOT_FOUND


class InvalidInputError(FoglineError):
    """A bad shape, datatype, content or parameter: the caller's to fix."""

    code = ErrorCode.INVALID_ARGUMENT


class UnavailableError(FoglineError):
    """No endpoint can take the request now: down, not ready, draining or unknown yet."""

    code = ErrorCode.UNAVAILABLE


class OverloadedError(FoglineError):
    """Too much work or too large a request. ``retry_after_s`` is a hint for well-behaved callers."""

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLargeError(OverloadedError):
    """A request over a message size limit on its way. The caller's to fix (a smaller batch): no retry
    elsewhere helps, and it says nothing about a peer's health, so it counts against no circuit."""


class DeadlineExceededError(FoglineError):
    """The deadline passed before an answer came."""

    code = ErrorCode.DEADLINE_EXCEEDED


class UnauthenticatedError(FoglineError):
    """No credential where one is required, or one that is not valid (a wrong API key, an unknown,
    spent or expired join token)."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDeniedError(FoglineError):
    """A valid credential that does not allow this: another member's id, a service the certificate
    does not name, a model the API key may not use."""

    code = ErrorCode.PERMISSION_DENIED


class ConflictError(FoglineError):
    """A valid request the current state does not allow: a second rollout of a model that has one
    running, a rollback with nothing to roll back to."""

    code = ErrorCode.FAILED_PRECONDITION


class InternalError(FoglineError):
    """A bug or a runtime failure."""

    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[FoglineError]] = {
    cls.code: cls
    for cls in (ModelNotFoundError, InvalidInputError, UnavailableError, OverloadedError,
                DeadlineExceededError, UnauthenticatedError, PermissionDeniedError, ConflictError, InternalError)
}


def error_for_code(code: ErrorCode, message: str) -> FoglineError:
    """The most specific error class for ``code``."""
    return _BY_CODE[code](message)


class PortInUseError(OSError):
    """A process could not listen on ``host:port``; ``flag`` is the command-line flag that picks it."""

    def __init__(self, host: str, port: int, flag: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: the port is in use (or not permitted); "
                         f"choose another with {flag} (0 = any free port)")
        self.host, self.port, self.flag = host, port, flag


# --- Bounded echoes ---------------------------------------------------------------------------------
# NOTE: an error message echoes what the caller sent (a model name, an input name) and what is served
# (the known models). Both may be of any size, and a gRPC status travels in a header of ~8 KiB: an
# unbounded echo would turn the answer into a transport failure. Call these on the error path only.

ECHO_MAX_CHARS = 100
"""The longest name an error message repeats in full."""
ECHO_MAX_ITEMS = 20
"""The most names of a list an error message repeats."""


def truncate(text: str, max_chars: int) -> str:
    """``text``, cut to ``max_chars`` characters with an ellipsis when longer."""
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def echo_name(name: str) -> str:
    """``name`` quoted for an error message, cut to :data:`ECHO_MAX_CHARS` with its length when longer."""
    if len(name) <= ECHO_MAX_CHARS:
        return repr(name)
    return f"{truncate(name, ECHO_MAX_CHARS)!r} ({len(name)} characters)"


def echo_names(names: Iterable[str]) -> str:
    """``names`` as a list for an error message: at most :data:`ECHO_MAX_ITEMS`, then "and N more"."""
    items = list(names)
    shown = "[" + ", ".join(echo_name(n) for n in items[:ECHO_MAX_ITEMS]) + "]"
    hidden = len(items) - ECHO_MAX_ITEMS
    return f"{shown} and {hidden} more" if hidden > 0 else shown
