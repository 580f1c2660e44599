"""Map Fogline error codes to gRPC status codes and back."""

from __future__ import annotations

import grpc

from fogline.errors import ErrorCode, FoglineError, InternalError, OverloadedError, error_for_code

TO_GRPC: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}
FROM_GRPC: dict[grpc.StatusCode, ErrorCode] = {v: k for k, v in TO_GRPC.items()}
# Codes a peer may return that are not Fogline's own: what they mean to a caller.
FROM_GRPC.update({
    grpc.StatusCode.CANCELLED: ErrorCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN: ErrorCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED: ErrorCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: ErrorCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE: ErrorCode.INVALID_ARGUMENT,
    grpc.StatusCode.ABORTED: ErrorCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: ErrorCode.INTERNAL,
    grpc.StatusCode.PERMISSION_DENIED: ErrorCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED: ErrorCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS: ErrorCode.INVALID_ARGUMENT,
})

RETRY_AFTER_KEY = "retry-after-s"


def from_rpc_error(exc: grpc.RpcError, *, peer: str = "") -> FoglineError:
    """The FoglineError a failed call stands for; ``peer`` prefixes transport failures."""
    code = FROM_GRPC.get(exc.code(), ErrorCode.INTERNAL)  # type: ignore[attr-defined]
    details = exc.details() or exc.code().name  # type: ignore[attr-defined]
    message = f"{peer}: {details}" if peer and code is ErrorCode.UNAVAILABLE else details
    err = error_for_code(code, message)
    if isinstance(err, OverloadedError):
        for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == RETRY_AFTER_KEY:
                err.retry_after_s = float(value)
    return err


def trailing_metadata(err: FoglineError) -> tuple[tuple[str, str], ...]:
    if isinstance(err, OverloadedError) and err.retry_after_s is not None:
        return ((RETRY_AFTER_KEY, f"{err.retry_after_s:.3f}"),)
    return ()


def as_fogline_error(exc: BaseException) -> FoglineError:
    if isinstance(exc, FoglineError):
        return exc
    return InternalError(f"internal error: {type(exc).__name__}: {exc}")
