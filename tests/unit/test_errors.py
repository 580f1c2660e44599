"""Every error code maps straight to one gRPC status and one HTTP status."""

from __future__ import annotations

import grpc
import pytest

from fogline.errors import ErrorCode, OverloadedError, error_for_code
from fogline.grpc.status import TO_GRPC, from_rpc_error, trailing_metadata
from fogline.http.status import HTTP_STATUS

EXPECTED = {
    ErrorCode.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404),
    ErrorCode.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    ErrorCode.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 503),
    ErrorCode.RESOURCE_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ErrorCode.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    ErrorCode.INTERNAL: (grpc.StatusCode.INTERNAL, 500),
}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_code_has_its_grpc_and_http_status(code: ErrorCode) -> None:
    assert (TO_GRPC[code], HTTP_STATUS[code]) == EXPECTED[code]
    assert error_for_code(code, "m").code is code


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple = ()) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailers


def test_a_peer_error_becomes_the_same_code_and_transport_failures_name_the_peer() -> None:
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"), peer="device-1")
    assert err.code is ErrorCode.UNAVAILABLE and str(err) == "device-1: connection refused"
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad shape"), peer="device-1")
    assert str(err) == "bad shape"


def test_the_retry_hint_survives_the_trip_through_trailing_metadata() -> None:
    trailers = trailing_metadata(OverloadedError("full", retry_after_s=0.25))
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", trailers))
    assert isinstance(err, OverloadedError) and err.retry_after_s == 0.25
