"""Protocol-independent values of the data plane: tensor and model specs, requests, responses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fogline.datatypes import numpy_dtype, v2_datatype
from fogline.errors import InvalidInputError, echo_name, echo_names

ParameterValue = bool | int | float | str

# Request/response parameters Fogline reads or writes. Clients may send `tier` and `session`.
PARAM_TIER = "fogline.tier"
PARAM_NODE = "fogline.node"
PARAM_ROUTE = "fogline.route"
PARAM_SESSION = "fogline.session"
PARAM_ATTEMPTS = "fogline.attempts"
# On the cloud master: the region to serve a request in (a request hint), and where it ran (a response tag).
PARAM_REGION = "fogline.region"
# On ModelStreamInfer: the caller's remaining time (a stream has no per-message deadline), and the
# status code of a failed request.
PARAM_TIMEOUT_MS = "fogline.timeout_ms"
PARAM_CODE = "fogline.code"


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
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, ParameterValue] = field(default_factory=dict)


# Values of `fogline.tier`: as a request hint (`auto` lets the edge master choose) and in responses.
TIER_AUTO = "auto"
TIER_DEVICE = "device"
TIER_CLOUD = "cloud"
TIERS = (TIER_AUTO, TIER_DEVICE, TIER_CLOUD)

# Values of `fogline.route`: why a request ran where it did (DESIGN.md §2).
ROUTE_HINT = "hint"
ROUTE_PLACEMENT = "placement"
ROUTE_OVERFLOW = "overflow"
ROUTE_FAILOVER = "failover"
ROUTE_CASCADE_HARD = "cascade-hard"
ROUTE_CASCADE_EASY = "cascade-easy"
ROUTE_DEGRADED = "degraded"

# Set to true on a cascade's device answer returned because the cloud was unreachable.
PARAM_DEGRADED = "fogline.degraded"
