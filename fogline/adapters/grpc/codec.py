"""Convert between V2 protobuf messages and the core's InferRequest / InferResponse.

Raw binary contents (``raw_input_contents`` / ``raw_output_contents``) are the fast path: numpy
views over the received bytes, no per-element work. Typed ``contents`` are accepted too.
:class:`V2Messages` is what the edge router needs of V2 messages it forwards as bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from fogline._proto import inference_pb2 as pb
from fogline.adapters.grpc import wire
from fogline.core.tensors import InferRequest, InferResponse, ParameterValue, numpy_dtype, v2_datatype
from fogline.errors import InternalError, InvalidInputError, PayloadTooLargeError, echo_name

# V2 datatype -> the InferTensorContents field that carries it. FP16 has none: raw only.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LEN = struct.Struct("<I")
_NUMBER_PARAMS = frozenset({"int64_param", "uint64_param", "double_param"})


def decode_parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, ParameterValue]:
    out: dict[str, ParameterValue] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(param, which)
    return out


def _received(param: pb.InferParameter) -> str:
    """What a parameter holds, for an error message: its type and value."""
    which = param.WhichOneof("parameter_choice")
    if which is None:
        return "an InferParameter with no value set"
    value = getattr(param, which)
    return f"{which} {echo_name(value) if isinstance(value, str) else repr(value)}"


def string_parameter(params: Mapping[str, pb.InferParameter], key: str) -> str | None:
    """The ``string_param`` of request parameter ``key``, None if absent; InvalidInputError naming the
    type received if it holds anything else."""
    param = params.get(key)
    if param is None:
        return None
    if param.WhichOneof("parameter_choice") != "string_param":
        raise InvalidInputError(f"parameter {key!r} must be a string_param; got {_received(param)}")
    return param.string_param


def positive_parameter(params: Mapping[str, pb.InferParameter], key: str) -> float | None:
    """Request parameter ``key`` as a positive, finite number (int64, uint64 or double), None if absent;
    InvalidInputError saying what it holds otherwise."""
    param = params.get(key)
    if param is None:
        return None
    which = param.WhichOneof("parameter_choice")
    value = getattr(param, which) if which in _NUMBER_PARAMS else None
    if value is None or not 0 < value < math.inf:
        raise InvalidInputError(f"parameter {key!r} must be a positive number (an int64_param); "
                                f"got {_received(param)}")
    return float(value)


def set_parameters(target: Mapping[str, pb.InferParameter], values: Mapping[str, ParameterValue]) -> None:
    for key, value in values.items():
        param = target[key]  # type: ignore[index]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


def encode_parameters(values: Mapping[str, ParameterValue]) -> bytes:
    """``values`` as the parameters field of a ModelInferResponse (or ModelInferRequest: the same field
    number): appended to an encoded one (``fogline.adapters.grpc.wire.with_id``), they replace its
    parameters of the same keys and keep the others."""
    msg = pb.ModelInferResponse()
    set_parameters(msg.parameters, values)
    return msg.SerializeToString()


def _shape(name: str, dims: Iterable[int]) -> tuple[int, ...]:
    shape = tuple(dims)
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"input {echo_name(name)}: shape {list(shape)} has a negative dimension")
    return shape


def decode_raw(name: str, datatype: str, dims: Iterable[int], raw: bytes) -> np.ndarray:
    """A tensor from its raw little-endian bytes; InvalidInputError if they do not fit the shape."""
    dtype = numpy_dtype(datatype)
    shape = _shape(name, dims)
    count = math.prod(shape)
    if datatype == "BYTES":
        return _split_bytes(name, raw, count).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"input {echo_name(name)}: raw content is {len(raw)} bytes, but shape {list(shape)} of {datatype} "
            f"needs {expected} bytes ({count} x {dtype.itemsize})"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _split_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    items: list[bytes] = []
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInputError(f"input {echo_name(name)}: BYTES content ends inside a length prefix")
        (size,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + size > len(view):
            raise InvalidInputError(
                f"input {echo_name(name)}: BYTES element {len(items)} claims {size} bytes, only "
                f"{len(view) - offset} remain; each element is a 4-byte little-endian length + data"
            )
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise InvalidInputError(
            f"input {echo_name(name)}: BYTES content has {len(items)} elements, shape needs {count}")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def decode_typed(name: str, datatype: str, dims: Iterable[int], contents: pb.InferTensorContents) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    shape = _shape(name, dims)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInputError(
            f"input {echo_name(name)}: {datatype} has no typed contents; send it in raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInputError(
            f"input {echo_name(name)}: contents.{field} has {len(values)} values, shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise InvalidInputError(f"input {echo_name(name)}: a value does not fit {datatype}: {exc}") from None


def decode_request(msg: pb.ModelInferRequest) -> InferRequest:
    """The core request for a V2 ModelInferRequest; InvalidInputError for malformed content."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; "
            "send one per input, in order, or none"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(msg.inputs):
        if tensor.name in inputs:
            raise InvalidInputError(f"input {echo_name(tensor.name)} appears twice")
        if raw:
            if tensor.HasField("contents"):
                raise _both_contents(msg.model_name, tensor.name)
            inputs[tensor.name] = decode_raw(tensor.name, tensor.datatype, tensor.shape, raw[i])
        else:
            inputs[tensor.name] = decode_typed(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
    return InferRequest(
        model=msg.model_name,
        version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        outputs=tuple(o.name for o in msg.outputs) or None,
        parameters=decode_parameters(msg.parameters),
    )


def _both_contents(model: str, name: str) -> InvalidInputError:
    return InvalidInputError(
        f"input {echo_name(name)} of model {echo_name(model)}: contents must not be set when the request has "
        f"raw_input_contents; send every tensor in raw_input_contents (the fast path) or every one in contents")


def tensor_bytes(array: np.ndarray) -> bytes:
    """The V2 raw encoding of ``array``."""
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.ravel():
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def encode_response(resp: InferResponse, *, raw: bool = True) -> pb.ModelInferResponse:
    """A V2 response; typed contents when ``raw`` is false, unless a datatype has none (FP16)."""
    msg = pb.ModelInferResponse(model_name=resp.model, model_version=resp.version, id=resp.id)
    datatypes = [v2_datatype(a.dtype) for a in resp.outputs.values()]
    raw = raw or "FP16" in datatypes
    for (name, array), datatype in zip(resp.outputs.items(), datatypes, strict=True):
        tensor = msg.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            msg.raw_output_contents.append(tensor_bytes(array))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(
                x.encode() if isinstance(x, str) else bytes(x) for x in array.ravel()
            )
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    if resp.parameters:
        set_parameters(msg.parameters, resp.parameters)
    return msg


def encode_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: str = "",
    request_id: str = "",
    outputs: Sequence[str] | None = None,
    parameters: Mapping[str, ParameterValue] | None = None,
) -> pb.ModelInferRequest:
    """A V2 request with raw binary contents (what the SDK sends)."""
    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, value in inputs.items():
        array = np.asarray(value)
        msg.inputs.add(name=name, datatype=v2_datatype(array.dtype), shape=array.shape)
        msg.raw_input_contents.append(tensor_bytes(array))
    for name in outputs or ():
        msg.outputs.add(name=name)
    if parameters:
        set_parameters(msg.parameters, parameters)
    return msg


def decode_outputs(msg: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    raw = msg.raw_output_contents
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(msg.outputs):
        if raw:
            out[tensor.name] = decode_raw(tensor.name, tensor.datatype, tensor.shape, raw[i])
        else:
            out[tensor.name] = decode_typed(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
    return out


class V2Messages:
    """``fogline.core.escalation.router.Messages`` for V2 messages as bytes; upstreams accept
    ``max_message_bytes``."""

    def __init__(self, *, max_message_bytes: int | None = None) -> None:
        self.max_message_bytes = max_message_bytes

    def retarget(self, request: bytes, model: str) -> bytes:
        """``request`` for ``model`` (:func:`wire.retarget`); PayloadTooLargeError if the new name takes
        it over the upstreams' message limit, before any upstream sees it."""
        out = wire.retarget(request, model)
        if self.max_message_bytes is not None and len(out) > self.max_message_bytes:
            raise PayloadTooLargeError(f"the request is {len(request)} bytes, {len(out)} once addressed to the "
                                       f"model {model!r} that serves it, over the {self.max_message_bytes}-byte "
                                       f"message limit; send a smaller batch")
        return out

    @staticmethod
    def with_version(request: bytes, version: str) -> bytes:
        """``request`` asking for ``version`` of its model (:func:`wire.with_version`)."""
        return wire.with_version(request, version)

    @staticmethod
    def probabilities(response: bytes, output: str | None) -> np.ndarray:
        """The tensor ``output`` of an encoded ModelInferResponse (its only output if None)."""
        try:
            msg = pb.ModelInferResponse.FromString(response)
        except DecodeError:
            raise InternalError("an upstream answered with a malformed ModelInferResponse") from None
        names = [t.name for t in msg.outputs]
        if output is None and len(names) != 1:
            raise InvalidInputError(f"model {msg.model_name!r} has outputs {names}: the catalog entry must name "
                                    f"the one holding class probabilities (output = ...)")
        index = 0 if output is None else names.index(output) if output in names else -1
        if index < 0:
            raise InvalidInputError(f"model {msg.model_name!r} has no output {output!r}; its outputs are {names}")
        tensor = msg.outputs[index]
        if msg.raw_output_contents:
            return decode_raw(tensor.name, tensor.datatype, tensor.shape, msg.raw_output_contents[index])
        return decode_typed(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
