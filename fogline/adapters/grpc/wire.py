"""Just enough of the protobuf wire format to edit V2 messages without decoding them.

Protobuf merges concatenated encodings of a message: a scalar field seen twice takes the last
value, repeated and map fields accumulate (a map entry replaces the one of the same key). So
``encoded + length_delimited(3, b"abc")`` is the message with its ``id`` (field 3) replaced — how
the masters re-address, re-tag and label requests and responses they forward without parsing and
re-serializing tensors. Every such edit is a function here:

- :func:`retarget`: a request (or response) addressed to another model;
- :func:`with_version`: a request for one version of its model (a rollout's canary or stable);
- :func:`with_id`: a response with the caller's id, the model name it asked for, and parameters
  (``fogline.adapters.grpc.codec.encode_parameters``, cached by the caller: they repeat);
- :func:`tag_stream_request` / :func:`message_id`: a request's stream-local id and deadline, and
  the id a reply is matched by;
- :func:`stream_response` / :func:`read_stream_response`: a ModelStreamInferResponse around a body;
- :func:`string_parameters`: string parameters to append to a request (its trace context on a stream),
  and :func:`model_version`: the version a response names.

ModelInferRequest and ModelInferResponse number the fields edited here alike: model_name 1, id 3,
parameters 4.
"""

from __future__ import annotations

from collections.abc import Iterator

from fogline._proto import inference_pb2 as pb
from fogline.core.parameters import PARAM_TIMEOUT_MS
from fogline.errors import InvalidInputError

MODEL_NAME = 1
"""ModelInferRequest.model_name and ModelInferResponse.model_name."""
MODEL_VERSION = 2
"""ModelInferRequest.model_version and ModelInferResponse.model_version."""
ID = 3
"""ModelInferRequest.id and ModelInferResponse.id."""
PARAMETERS = 4
"""ModelInferRequest.parameters and ModelInferResponse.parameters (map<string, InferParameter>)."""
_MAP_KEY, _MAP_VALUE = 1, 2
_STRING_PARAM = 3
"""InferParameter.string_param."""
STREAM_ERROR = 1
"""ModelStreamInferResponse.error_message."""
STREAM_BODY = 2
"""ModelStreamInferResponse.infer_response."""


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """The encoding of a string/bytes/message field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise InvalidInputError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """Top-level (field number, wire type, value) of an encoded message; no nested decoding."""
    buf = memoryview(data)
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
            yield field, wire_type, value
        elif wire_type == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise InvalidInputError("truncated protobuf field")
            yield field, wire_type, buf[pos : pos + size]
            pos += size
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            yield field, wire_type, int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        else:
            raise InvalidInputError(f"unsupported protobuf wire type {wire_type}")

def _string(field: int, text: str) -> bytes:
    return length_delimited(field, text.encode())


def retarget(message: bytes, model: str) -> bytes:
    """``message`` (a ModelInferRequest or ModelInferResponse) with ``model`` as its model_name."""
    return message + _string(MODEL_NAME, model)


def with_version(message: bytes, version: str) -> bytes:
    """``message`` (a ModelInferRequest) asking for ``version`` of its model."""
    return message + _string(MODEL_VERSION, version)


def with_id(message: bytes, id: str, *, model_name: str | None = None, parameters: bytes = b"") -> bytes:
    """``message`` (a ModelInferResponse or ModelInferRequest) with ``id`` as its id, ``model_name`` as its
    model name if given, and the encoded ``parameters`` (``codec.encode_parameters``) merged into its
    own; the message is copied once."""
    suffix = _string(ID, id)
    if model_name is not None:
        suffix += _string(MODEL_NAME, model_name)
    return b"".join((message, suffix, parameters))


def string_parameters(values: dict[str, str]) -> bytes:
    """``values`` as string parameters of a ModelInferRequest (or response), encoded to append to it: each
    replaces a parameter of the same name and keeps the others."""
    entries = (_string(_MAP_KEY, key) + length_delimited(_MAP_VALUE, _string(_STRING_PARAM, value))
               for key, value in values.items())
    return b"".join(length_delimited(PARAMETERS, entry) for entry in entries)


def model_version(message: bytes | memoryview) -> str:
    """The model_version of a ModelInferResponse (or request) as protobuf reads it: the last one."""
    found = ""
    for field, _, value in fields(message):
        if field == MODEL_VERSION:
            found = bytes(value).decode(errors="replace")  # type: ignore[arg-type]
    return found


def tag_stream_request(request: bytes, id: str, timeout_ms: int | None) -> bytes:
    """``request`` re-tagged for a stream: its stream-local ``id`` (the last id wins) and, if given, the
    caller's remaining time in ``fogline.timeout_ms`` (a stream message has no deadline of its own)."""
    tag = pb.ModelInferRequest(id=id)
    if timeout_ms is not None:
        tag.parameters[PARAM_TIMEOUT_MS].int64_param = timeout_ms
    return request + tag.SerializeToString()


def message_id(message: bytes | memoryview) -> str:
    """The id of a ModelInferResponse (or request) as protobuf reads it: the last one, as a chained hop
    (cloud -> edge -> device) appends its own."""
    found = ""
    for field, _, value in fields(message):
        if field == ID:
            found = bytes(value).decode()  # type: ignore[arg-type]
    return found


def stream_response(body: bytes) -> bytes:
    """A ModelStreamInferResponse whose infer_response is ``body`` (an encoded ModelInferResponse)."""
    return length_delimited(STREAM_BODY, body)


def read_stream_response(reply: bytes) -> tuple[str, memoryview]:
    """The error message (empty if none) and the infer_response bytes of a ModelStreamInferResponse."""
    error, body = "", memoryview(b"")
    for field, _, value in fields(reply):
        if field == STREAM_ERROR:
            error = bytes(value).decode(errors="replace")  # type: ignore[arg-type]
        elif field == STREAM_BODY:
            body = value  # type: ignore[assignment]
    return error, body
