"""Just enough of the protobuf wire format to edit messages without decoding them.

Protobuf merges concatenated encodings of a message: a scalar field seen twice takes the last
value, repeated and map fields accumulate. So ``encoded + length_delimited(3, b"abc")`` is the
message with its ``id`` (field 3) replaced — how an edge master re-tags requests and responses it
forwards without parsing and re-serializing tensors.
"""

from __future__ import annotations

from collections.abc import Iterator

from fogline.errors import InvalidInputError


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


def fields(data: bytes) -> Iterator[tuple[int, int, memoryview | int]]:
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
