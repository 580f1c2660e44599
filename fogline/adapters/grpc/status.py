"""Map Fogline error codes to gRPC status codes and back."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from fogline.errors import (
    ErrorCode,
    FoglineError,
    InternalError,
    OverloadedError,
    PayloadTooLargeError,
    error_for_code,
)

TO_GRPC: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
}
FROM_GRPC: dict[grpc.StatusCode, ErrorCode] = {v: k for k, v in TO_GRPC.items()}
# Codes a peer may return that are not Fogline's own: what they mean to a caller.
FROM_GRPC.update({
    grpc.StatusCode.CANCELLED: ErrorCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN: ErrorCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED: ErrorCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE: ErrorCode.INVALID_ARGUMENT,
    grpc.StatusCode.ABORTED: ErrorCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: ErrorCode.INTERNAL,
    grpc.StatusCode.ALREADY_EXISTS: ErrorCode.INVALID_ARGUMENT,
})

T = TypeVar("T")

RETRY_AFTER_KEY = "retry-after-s"
TOO_LARGE_KEY = "fogline-too-large"
"""Trailer of a RESOURCE_EXHAUSTED that is a :class:`PayloadTooLargeError`, not an overload."""
_GRPC_TOO_LARGE = "larger than max"  # NOTE: grpc core's words for a message over a limit, sent or received
MAX_DETAILS_BYTES = 2048
"""The most UTF-8 bytes of a message a status carries. NOTE: the message travels percent-encoded in the
grpc-message trailer, and trailers over 8 KiB (grpc.max_metadata_size) are refused by the receiver,
which turns any answer into RESOURCE_EXHAUSTED: 2 KiB stays under that even fully encoded."""


def from_rpc_error(exc: grpc.RpcError, *, peer: str = "") -> FoglineError:
    """The FoglineError a failed call stands for; ``peer`` prefixes transport failures."""
    code = FROM_GRPC.get(exc.code(), ErrorCode.INTERNAL)  # type: ignore[attr-defined]
    details = exc.details() or exc.code().name  # type: ignore[attr-defined]
    message = f"{peer}: {details}" if peer and code is ErrorCode.UNAVAILABLE else details
    if code is not ErrorCode.RESOURCE_EXHAUSTED:
        return error_for_code(code, message)
    trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
    if TOO_LARGE_KEY in trailers or _GRPC_TOO_LARGE in message:
        return PayloadTooLargeError(message)
    retry_after = trailers.get(RETRY_AFTER_KEY)
    return OverloadedError(message, retry_after_s=None if retry_after is None else float(retry_after))


async def translated(call: Awaitable[T], *, peer: str) -> T:
    """What ``call`` (a grpc call to ``peer``) returns; its failure as the FoglineError it stands for."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, peer=peer) from None


def trailing_metadata(err: FoglineError) -> tuple[tuple[str, str], ...]:
    """The trailers that carry what ``err``'s status code alone cannot: too large, or a retry hint."""
    if isinstance(err, PayloadTooLargeError):
        return ((TOO_LARGE_KEY, "1"),)
    if isinstance(err, OverloadedError) and err.retry_after_s is not None:
        return ((RETRY_AFTER_KEY, f"{err.retry_after_s:.3f}"),)
    return ()


def status_details(message: str) -> str:
    """``message`` as a status may carry it: cut to :data:`MAX_DETAILS_BYTES` with an ellipsis. A net
    under messages that echo what they were sent (those bound their echoes with ``fogline.errors.echo_name``)."""
    data = message.encode()
    if len(data) <= MAX_DETAILS_BYTES:
        return message
    return data[: MAX_DETAILS_BYTES - 3].decode(errors="ignore") + "…"


def as_fogline_error(exc: BaseException) -> FoglineError:
    if isinstance(exc, FoglineError):
        return exc
    return InternalError(f"internal error: {type(exc).__name__}: {exc}")
