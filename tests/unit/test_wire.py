"""The wire-format helpers edit messages exactly as protobuf's merge rules say."""

from __future__ import annotations

import asyncio

import pytest

from fogline._proto import inference_pb2 as pb
from fogline.adapters.grpc import wire
from fogline.adapters.grpc.codec import V2Messages, encode_parameters
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
    renamed = V2Messages(max_message_bytes=len(request) + 14).retarget(request, "digits-small")
    assert pb.ModelInferRequest.FromString(renamed).model_name == "digits-small"
    with pytest.raises(PayloadTooLargeError, match=rf"is {len(request)} bytes, {len(renamed)} once addressed to the model "
                                              rf"'digits-small' that serves it, over the {len(renamed) - 1}-byte"):
        V2Messages(max_message_bytes=len(request) + 13).retarget(request, "digits-small")


def request_with_parameters() -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="digits", model_version="2", id="client-id")
    msg.parameters["fogline.tier"].string_param = "auto"
    msg.parameters["fogline.session"].string_param = "user-1"
    msg.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    msg.raw_input_contents.append(b"\x00" * 8)
    return msg


def test_retarget_replaces_the_model_name_of_a_request_and_keeps_the_rest() -> None:
    original = request_with_parameters()
    edited = pb.ModelInferRequest.FromString(wire.retarget(original.SerializeToString(), "digits-small"))
    assert edited.model_name == "digits-small"
    edited.model_name = original.model_name
    assert edited == original


def test_retargeting_twice_keeps_the_last_name() -> None:
    once = wire.retarget(pb.ModelInferRequest(model_name="a").SerializeToString(), "b")
    assert pb.ModelInferRequest.FromString(wire.retarget(once, "c")).model_name == "c"


def test_tag_stream_request_sets_the_stream_id_and_the_callers_remaining_time() -> None:
    original = request_with_parameters()
    edited = pb.ModelInferRequest.FromString(wire.tag_stream_request(original.SerializeToString(), "17", 250))
    assert edited.id == "17"
    assert edited.parameters["fogline.timeout_ms"].int64_param == 250
    assert edited.parameters["fogline.session"].string_param == "user-1"  # the caller's parameters stay
    assert list(edited.raw_input_contents) == list(original.raw_input_contents)


def test_tag_stream_request_without_a_timeout_adds_none_and_a_second_tag_wins() -> None:
    once = wire.tag_stream_request(request_with_parameters().SerializeToString(), "1", None)
    assert "fogline.timeout_ms" not in pb.ModelInferRequest.FromString(once).parameters
    twice = pb.ModelInferRequest.FromString(wire.tag_stream_request(once, "2", 5))
    assert twice.id == "2" and twice.parameters["fogline.timeout_ms"].int64_param == 5
    assert wire.message_id(wire.tag_stream_request(once, "2", 5)) == "2"


def test_with_id_renames_and_tags_a_response_the_last_value_winning() -> None:
    response = pb.ModelInferResponse(model_name="digits-small", model_version="1", id="7")
    response.parameters["fogline.tier"].string_param = "device"
    response.parameters["fogline.node"].string_param = "dev-a"
    response.raw_output_contents.append(b"\x01\x02")
    tags = encode_parameters({"fogline.tier": "cloud", "fogline.attempts": 2, "fogline.degraded": True})
    edited = pb.ModelInferResponse.FromString(
        wire.with_id(response.SerializeToString(), "client-id", model_name="digits", parameters=tags))
    assert (edited.id, edited.model_name, edited.model_version) == ("client-id", "digits", "1")
    params = edited.parameters
    assert params["fogline.tier"].string_param == "cloud"  # replaced: the last entry of a key wins
    assert params["fogline.node"].string_param == "dev-a"  # kept
    assert params["fogline.attempts"].int64_param == 2 and params["fogline.degraded"].bool_param
    assert list(edited.raw_output_contents) == [b"\x01\x02"]


def test_with_id_alone_keeps_the_model_name() -> None:
    response = pb.ModelInferResponse(model_name="mlp", id="7").SerializeToString()
    edited = pb.ModelInferResponse.FromString(wire.with_id(response, "mine"))
    assert (edited.id, edited.model_name) == ("mine", "mlp")


def test_stream_responses_carry_a_body_and_read_back_with_their_error() -> None:
    body = pb.ModelInferResponse(model_name="m", id="3").SerializeToString()
    reply = wire.stream_response(body)
    assert pb.ModelStreamInferResponse.FromString(reply).infer_response.id == "3"
    assert wire.read_stream_response(reply) == ("", body)
    failed = pb.ModelStreamInferResponse(error_message="queue full")
    failed.infer_response.id = "4"
    error, failed_body = wire.read_stream_response(failed.SerializeToString())
    assert error == "queue full" and wire.message_id(failed_body) == "4"
