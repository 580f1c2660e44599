"""Protocol-independent values of the data plane: V2 datatypes (and how they map to numpy and to
ONNX Runtime type strings), tensor and model specs, requests, responses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fogline.errors import InvalidInputError, echo_name, echo_names

ParameterValue = bool | int | float | str

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


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output: name, V2 datatype and shape (-1 marks a variable dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def check(self, model: str, array: np.ndarray, max_batch_size: int) -> None:
        """Raise InvalidInputError naming this tensor if ``array`` does not fit it."""
        expected = numpy_dtype(self.datatype)
        if array.dtype != expected and not (expected.kind == "O" and array.dtype.kind in "OSU"):
            raise InvalidInputError(
                f"input {self.name!r} of model {model!r} expects datatype {self.datatype}, "
                f"got {v2_datatype(array.dtype)}"
            )
        shape = array.shape
        if len(shape) != len(self.shape) or any(
            want != -1 and got != want for want, got in zip(self.shape, shape, strict=False)
        ):
            raise InvalidInputError(
                f"input {self.name!r} of model {model!r} expects shape {list(self.shape)} "
                f"(-1 = any size), got {list(shape)}"
            )
        if max_batch_size > 0 and shape[0] > max_batch_size:
            raise InvalidInputError(
                f"input {self.name!r} of model {model!r} has batch size {shape[0]}, "
                f"over the model's max_batch_size {max_batch_size}; split the request"
            )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a served model accepts and returns. With ``max_batch_size > 0`` dimension 0 is the batch."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise InvalidInputError unless ``inputs`` are exactly this model's inputs, well formed."""
        expected = {spec.name for spec in self.inputs}
        if inputs.keys() != expected:
            missing = sorted(expected - inputs.keys())
            unknown = sorted(inputs.keys() - expected)
            raise InvalidInputError(
                f"model {self.name!r} takes inputs {sorted(expected)}; "
                f"missing {missing}, unknown {echo_names(unknown)}"
            )
        batch = None
        for spec in self.inputs:
            array = inputs[spec.name]
            spec.check(self.name, array, self.max_batch_size)
            if self.max_batch_size > 0:
                if batch is not None and array.shape[0] != batch:
                    raise InvalidInputError(
                        f"inputs of model {self.name!r} disagree on the batch size "
                        f"({batch} vs {array.shape[0]} for {spec.name!r})"
                    )
                batch = array.shape[0]

    def check_outputs(self, requested: tuple[str, ...] | None) -> None:
        if not requested:
            return
        known = {spec.name for spec in self.outputs}
        unknown = sorted(set(requested) - known)
        if unknown:
            raise InvalidInputError(
                f"model {self.name!r} has no output {echo_name(unknown[0])}; its outputs are {sorted(known)}"
            )


@dataclass(slots=True)
class InferRequest:
    """One decoded inference request. ``deadline`` is on the data plane's monotonic clock."""

    model: str
    inputs: dict[str, np.ndarray]
    version: str = ""
    id: str = ""
    outputs: tuple[str, ...] | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    deadline: float | None = None


@dataclass(slots=True)
class InferResponse:
    """What a model answered: its outputs by name, the version that ran, the request's id and parameters."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
