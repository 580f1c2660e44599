"""V2 tensor datatypes and how they map to numpy and to ONNX Runtime type strings."""

from __future__ import annotations

import numpy as np

from fogline.errors import InvalidInputError, echo_name

# V2 datatype name -> numpy dtype (little-endian, as the protocol's raw encoding is).
_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_V2_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in _NUMPY.items() if name != "BYTES"}

# ONNX Runtime's type strings ("tensor(float)") -> V2 datatype.
_ORT: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

DATATYPES = frozenset(_NUMPY)


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a V2 datatype; InvalidInputError for a name the protocol does not have."""
    try:
        return _NUMPY[datatype]
    except KeyError:
        raise InvalidInputError(
            f"unknown datatype {echo_name(datatype)}; use one of {', '.join(sorted(DATATYPES))}"
        ) from None


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype (object, str and bytes arrays are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _V2_BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise InvalidInputError(f"numpy dtype {dtype} has no V2 datatype") from None


def from_onnx_type(onnx_type: str) -> str:
    try:
        return _ORT[onnx_type]
    except KeyError:
        raise InvalidInputError(f"ONNX type {onnx_type} is not supported by the V2 protocol") from None
