"""V2 codec: every datatype both ways, and a clear INVALID_ARGUMENT for every malformed tensor."""

from __future__ import annotations

import numpy as np
import pytest

from fogline._proto import inference_pb2 as pb
from fogline.adapters.grpc.codec import (
    decode_outputs,
    decode_parameters,
    decode_request,
    encode_request,
    encode_response,
    positive_parameter,
    set_parameters,
    string_parameter,
)
from fogline.core.tensors import InferResponse
from fogline.errors import InvalidInputError

SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-32768, 1, 32767]], np.int16),
    "INT32": np.array([[-(2**31), 2, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 3, 2**63 - 1]], np.int64),
    "UINT8": np.array([[0, 1, 255]], np.uint8),
    "UINT16": np.array([[0, 1, 65535]], np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1]], np.uint64),
    "FP16": np.array([[0.5, -1.25, 65504]], np.float16),
    "FP32": np.array([[0.5, -1.25, 3.4e38]], np.float32),
    "FP64": np.array([[0.5, -1.25, 1e300]], np.float64),
    "BYTES": np.array([[b"", b"abc", "\u00e9t\u00e9".encode()]], dtype=object),
}


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_raw_round_trip_of_every_datatype(datatype: str) -> None:
    array = SAMPLES[datatype]
    msg = encode_request("m", {"t": array})
    assert msg.inputs[0].datatype == datatype and list(msg.inputs[0].shape) == [1, 3]
    decoded = decode_request(pb.ModelInferRequest.FromString(msg.SerializeToString())).inputs["t"]
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == array.dtype


@pytest.mark.parametrize("datatype", sorted(set(SAMPLES) - {"FP16"}))
def test_typed_contents_round_trip_of_every_datatype(datatype: str) -> None:
    array = SAMPLES[datatype]
    response = encode_response(InferResponse("m", "1", {"t": array}), raw=False)
    assert not response.raw_output_contents
    decoded = decode_outputs(pb.ModelInferResponse.FromString(response.SerializeToString()))["t"]
    np.testing.assert_array_equal(decoded, array)


def test_typed_response_falls_back_to_raw_when_an_output_is_fp16() -> None:
    response = encode_response(InferResponse("m", "1", {"a": SAMPLES["FP16"], "b": SAMPLES["FP32"]}), raw=False)
    assert len(response.raw_output_contents) == 2
    np.testing.assert_array_equal(decode_outputs(response)["a"], SAMPLES["FP16"])


def raw_request(datatype: str, shape: list[int], raw: bytes, name: str = "x") -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name=name, datatype=datatype, shape=shape)
    msg.raw_input_contents.append(raw)
    return msg


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (raw_request("FP32", [2, 3], b"\0" * 20), r"input 'x': raw content is 20 bytes, but shape \[2, 3\] of FP32 needs 24"),
        (raw_request("FP32", [2, -3], b""), r"input 'x': shape \[2, -3\] has a negative dimension"),
        (raw_request("FLOAT", [1], b"\0" * 4), r"unknown datatype 'FLOAT'; use one of BOOL, BYTES"),
        (raw_request("BYTES", [1], b"\x05\0\0\0ab"), r"input 'x': BYTES element 0 claims 5 bytes, only 2 remain"),
        (raw_request("BYTES", [2], b"\x01\0\0\0a"), r"input 'x': BYTES content has 1 elements, shape needs 2"),
        (raw_request("BYTES", [1], b"\x01\0"), r"input 'x': BYTES content ends inside a length prefix"),
    ],
)
def test_malformed_raw_tensors_are_invalid_argument_naming_the_tensor(msg: pb.ModelInferRequest, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decode_request(msg)


def test_raw_contents_must_cover_every_input() -> None:
    msg = raw_request("FP32", [1], b"\0" * 4)
    msg.inputs.add(name="y", datatype="FP32", shape=[1])
    with pytest.raises(InvalidInputError, match="raw_input_contents has 1 entries for 2 inputs"):
        decode_request(msg)


def test_typed_contents_with_the_wrong_count_or_range_or_fp16_are_rejected() -> None:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend([1, 2, 3])
    with pytest.raises(InvalidInputError, match=r"contents.fp32_contents has 3 values, shape \[2, 2\] needs 4"):
        decode_request(msg)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    with pytest.raises(InvalidInputError, match="a value does not fit INT8"):
        decode_request(msg)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP16", shape=[1])
    with pytest.raises(InvalidInputError, match="FP16 has no typed contents; send it in raw_input_contents"):
        decode_request(msg)


def test_duplicate_input_names_are_rejected() -> None:
    msg = raw_request("FP32", [1], b"\0" * 4)
    msg.inputs.add(name="x", datatype="FP32", shape=[1])
    msg.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(InvalidInputError, match="input 'x' appears twice"):
        decode_request(msg)


def test_parameters_round_trip_with_their_types() -> None:
    values = {"s": "text", "i": -3, "f": 0.25, "b": True}
    msg = pb.ModelInferRequest()
    set_parameters(msg.parameters, values)
    assert decode_parameters(msg.parameters) == values


def test_concatenated_encodings_merge_parameters_into_a_response() -> None:
    """The edge appends routing parameters to a device's response bytes without re-encoding it."""
    device = encode_response(InferResponse("m", "1", {"t": SAMPLES["FP32"]}, parameters={"fogline.node": "d1",
                                                                                        "fogline.tier": "device"}))
    suffix = pb.ModelInferResponse()
    set_parameters(suffix.parameters, {"fogline.route": "placement", "fogline.attempts": 2})
    merged = pb.ModelInferResponse.FromString(device.SerializeToString() + suffix.SerializeToString())
    assert decode_parameters(merged.parameters) == {"fogline.node": "d1", "fogline.tier": "device",
                                                    "fogline.route": "placement", "fogline.attempts": 2}
    np.testing.assert_array_equal(decode_outputs(merged)["t"], SAMPLES["FP32"])


def test_raw_and_typed_contents_for_one_input_are_invalid_as_triton_answers() -> None:
    msg = encode_request("mlp", {"input": np.ones((1, 2), np.float32)})
    msg.inputs[0].contents.fp32_contents.extend([1.0, 1.0])
    with pytest.raises(InvalidInputError, match="input 'input' of model 'mlp': contents must not be set when"):
        decode_request(msg)


def test_long_input_names_are_echoed_cut_short() -> None:
    msg = encode_request("m", {"n" * 5000: np.ones((1, 2), np.float32)})
    msg.raw_input_contents[0] = b"\0"
    with pytest.raises(InvalidInputError) as caught:
        decode_request(msg)
    assert "…' (5000 characters): raw content is 1 bytes" in caught.value.message
    assert len(caught.value.message) < 300


def params(**values: object) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest()
    for key, (kind, value) in values.items():
        setattr(msg.parameters[key], kind, value)
    return msg


def test_a_string_parameter_of_another_type_is_invalid_naming_the_type_received() -> None:
    assert string_parameter(params(t=("string_param", "cloud")).parameters, "t") == "cloud"
    assert string_parameter(params().parameters, "t") is None
    with pytest.raises(InvalidInputError, match="parameter 't' must be a string_param; got int64_param 3"):
        string_parameter(params(t=("int64_param", 3)).parameters, "t")
    with pytest.raises(InvalidInputError, match="got bool_param True"):
        string_parameter(params(t=("bool_param", True)).parameters, "t")
    empty = pb.ModelInferRequest()
    empty.parameters["t"].SetInParent()
    with pytest.raises(InvalidInputError, match="got an InferParameter with no value set"):
        string_parameter(empty.parameters, "t")


@pytest.mark.parametrize(("kind", "value"), [("int64_param", 250), ("uint64_param", 250), ("double_param", 250.0)])
def test_a_positive_number_parameter_takes_any_numeric_type(kind: str, value: object) -> None:
    assert positive_parameter(params(ms=(kind, value)).parameters, "ms") == 250.0


@pytest.mark.parametrize(("kind", "value", "words"), [
    ("int64_param", 0, "int64_param 0"), ("int64_param", -5, "int64_param -5"),
    ("double_param", float("nan"), "double_param nan"), ("double_param", float("inf"), "double_param inf"),
    ("string_param", "250", "string_param '250'"), ("bool_param", True, "bool_param True"),
])
def test_a_positive_number_parameter_refuses_anything_else(kind: str, value: object, words: str) -> None:
    with pytest.raises(InvalidInputError, match=f"parameter 'ms' must be a positive number .*; got {words}"):
        positive_parameter(params(ms=(kind, value)).parameters, "ms")
