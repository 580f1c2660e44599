"""The wire-format helpers edit messages exactly as protobuf's merge rules say."""

from __future__ import annotations

import asyncio

import pytest

from fogline._proto import inference_pb2 as pb
from fogline.adapters.grpc.forward import V2Wire
from fogline.adapters.grpc.upstream import StreamUpstream
from fogline.adapters.grpc.wire import fields, length_delimited, varint
from fogline.errors import InvalidInputError, PayloadTooLargeError


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63])
def test_varint_matches_protobuf(value: int) -> None:
    encoded = pb.ModelReadyResponse(ready=True).SerializeToString()  # sanity: the library is there
    assert encoded
    msg = pb.InferParameter(uint64_param=value).SerializeToString()
    assert msg == varint(5 << 3 | 0) + varint(value)


def test_appending_an_id_replaces_it_and_keeps_everything_else() -> None:
    original = pb.ModelInferRequest(model_name="m", id="client-id")
    original.raw_input_contents.append(b"\x00" * 10)
    edited = pb.ModelInferRequest.FromString(original.SerializeToString() + length_delimited(3, b"17"))
    assert edited.id == "17" and edited.model_name == "m" and edited.raw_input_contents == [b"\x00" * 10]


def test_fields_slices_nested_messages_without_decoding_them() -> None:
    inner = pb.ModelInferResponse(model_name="m", id="x").SerializeToString()
    outer = pb.ModelStreamInferResponse(error_message="bad", infer_response=pb.ModelInferResponse.FromString(inner))
    found = {field: bytes(value) for field, _, value in fields(outer.SerializeToString())}  # type: ignore[arg-type]
    assert found == {1: b"bad", 2: inner}


def test_truncated_input_is_invalid_argument() -> None:
    with pytest.raises(InvalidInputError):
        list(fields(length_delimited(2, b"abcdef")[:-2]))


def test_a_reply_is_matched_by_its_last_id_as_protobuf_reads_it() -> None:
    """Through a chain of hops each hop appends its id; the stream must match the outermost one."""
    inner = pb.ModelInferResponse(model_name="m", id="7").SerializeToString()
    body = inner + length_delimited(3, b"42")  # the next hop's tag, appended
    assert pb.ModelInferResponse.FromString(body).id == "42"
    loop = asyncio.new_event_loop()
    try:
        waiting = {"7": loop.create_future(), "42": loop.create_future()}
        StreamUpstream._deliver(length_delimited(2, body), waiting)
        assert waiting["42"].done() and not waiting["7"].done()
    finally:
        loop.close()


def test_retargeting_renames_the_model_within_the_message_limit_or_refuses() -> None:
    request = pb.ModelInferRequest(model_name="digits", id="r").SerializeToString()
    renamed = V2Wire(max_message_bytes=len(request) + 14).retarget(request, "digits-small")
    assert pb.ModelInferRequest.FromString(renamed).model_name == "digits-small"
    with pytest.raises(PayloadTooLargeError, match=rf"is {len(request)} bytes, {len(renamed)} once addressed to the model "
                                              rf"'digits-small' that serves it, over the {len(renamed) - 1}-byte"):
        V2Wire(max_message_bytes=len(request) + 13).retarget(request, "digits-small")
