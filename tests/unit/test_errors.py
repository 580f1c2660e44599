"""Every error code maps straight to one gRPC status and one HTTP status."""

from __future__ import annotations

import grpc
import pytest

from fogline.adapters.grpc.status import MAX_DETAILS_BYTES, TO_GRPC, from_rpc_error, status_details, trailing_metadata
from fogline.adapters.http.status import HTTP_STATUS
from fogline.errors import (
    ECHO_MAX_CHARS,
    ECHO_MAX_ITEMS,
    ErrorCode,
    OverloadedError,
    PayloadTooLargeError,
    echo_name,
    echo_names,
    error_for_code,
)

EXPECTED = {
    ErrorCode.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404),
    ErrorCode.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    ErrorCode.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 503),
    ErrorCode.RESOURCE_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ErrorCode.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    ErrorCode.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, 401),
    ErrorCode.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, 403),
    ErrorCode.INTERNAL: (grpc.StatusCode.INTERNAL, 500),
    ErrorCode.FAILED_PRECONDITION: (grpc.StatusCode.FAILED_PRECONDITION, 409),
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


def test_a_payload_too_large_is_told_apart_from_an_overload_across_the_wire() -> None:
    trailers = trailing_metadata(PayloadTooLargeError("send a smaller batch"))
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "send a smaller batch", trailers))
    assert isinstance(err, PayloadTooLargeError) and err.code is ErrorCode.RESOURCE_EXHAUSTED
    for details in ("Received message larger than max (1048577 vs. 1048576)",
                    "Sent message larger than max (70000000 vs. 67108864)"):  # grpc core's own, either end
        assert isinstance(from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, details)),
                          PayloadTooLargeError)
    full = from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))
    assert isinstance(full, OverloadedError) and not isinstance(full, PayloadTooLargeError)


def test_echoed_names_are_cut_to_a_hundred_characters_with_their_length() -> None:
    assert echo_name("mlp") == "'mlp'"
    assert echo_name("x" * ECHO_MAX_CHARS) == repr("x" * ECHO_MAX_CHARS)
    long = echo_name("x" * 10_000)
    assert long == repr("x" * (ECHO_MAX_CHARS - 1) + "…") + " (10000 characters)"


def test_echoed_lists_show_twenty_names_and_how_many_more() -> None:
    assert echo_names(["cnn", "mlp"]) == "['cnn', 'mlp']"  # as a list prints
    assert echo_names([]) == "[]"
    names = [f"m{i:02}" for i in range(ECHO_MAX_ITEMS + 5)]
    assert echo_names(names) == repr(names[:ECHO_MAX_ITEMS]) + " and 5 more"
    assert len(echo_names(["y" * 10_000] * 1000)) < 3000


@pytest.mark.parametrize("text", ["x" * 10_000, "é" * 10_000, "模" * 5_000])
def test_status_details_fit_the_trailer_even_percent_encoded(text: str) -> None:
    details = status_details(f"model {text} is not served")
    assert len(details.encode()) <= MAX_DETAILS_BYTES and details.endswith("…")
    assert details.startswith("model ")
    assert status_details("short") == "short"
