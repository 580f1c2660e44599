"""Fogline: hierarchical edge-cloud inference.

The client SDK is :class:`fogline.Client` (asyncio) and :class:`fogline.SyncClient`.
"""

from fogline._version import __version__
from fogline.errors import (
    DeadlineExceededError,
    ErrorCode,
    FoglineError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "TLS",
    "Client",
    "DeadlineExceededError",
    "ErrorCode",
    "FoglineError",
    "InferResult",
    "InternalError",
    "InvalidInputError",
    "ModelNotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "SyncClient",
    "UnauthenticatedError",
    "UnavailableError",
    "__version__",
]


def __getattr__(name: str) -> object:
    # NOTE: the SDK pulls in grpc; importing the core (fogline.core.serving.batching, ...) must not.
    if name in ("Client", "SyncClient", "InferResult", "TLS"):
        from fogline.sdk import client

        return getattr(client, name)
    raise AttributeError(f"module 'fogline' has no attribute {name!r}")
