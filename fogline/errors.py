"""The one error type of Fogline's core, and its codes.

Every failure a caller can act on is a :class:`FoglineError` carrying an :class:`ErrorCode`.
The core never imports a protocol library: each adapter maps the code straight to its own
status (``fogline.grpc.status`` for gRPC, ``fogline.http`` for HTTP).

    FoglineError
    ├── ModelNotFoundError      NOT_FOUND           unknown model or version
    ├── InvalidInputError       INVALID_ARGUMENT    bad shape, datatype, bytes or parameters
    ├── UnavailableError        UNAVAILABLE         no healthy endpoint, peer down, not ready, draining
    ├── OverloadedError         RESOURCE_EXHAUSTED  queue full or payload too large; has a retry hint
    ├── DeadlineExceededError   DEADLINE_EXCEEDED   the caller's deadline passed
    └── InternalError           INTERNAL            a bug or a runtime failure
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


# NOTE: only these say something about the peer's health; a client's bad input never does.
PEER_FAILURE_CODES = frozenset(
    {ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED}
)


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
    code = ErrorCode.NOT_FOUND


class InvalidInputError(FoglineError):
    code = ErrorCode.INVALID_ARGUMENT


class UnavailableError(FoglineError):
    code = ErrorCode.UNAVAILABLE


class OverloadedError(FoglineError):
    """Too much work or too large a request. ``retry_after_s`` is a hint for well-behaved callers."""

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(FoglineError):
    code = ErrorCode.DEADLINE_EXCEEDED


class InternalError(FoglineError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[FoglineError]] = {
    cls.code: cls
    for cls in (ModelNotFoundError, InvalidInputError, UnavailableError, OverloadedError,
                DeadlineExceededError, InternalError)
}


def error_for_code(code: ErrorCode, message: str) -> FoglineError:
    """The most specific error class for ``code``."""
    return _BY_CODE[code](message)
