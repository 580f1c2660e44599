"""ONNX Runtime sessions: provider choice, specs from the model file, and the blocking run."""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import numpy as np

from fogline.core.serving.repository import ConfigError, ModelConfig
from fogline.core.tensors import ModelSpec, TensorSpec, from_onnx_type
from fogline.errors import InvalidInputError

log = logging.getLogger(__name__)

# Accelerated first. TensorRT is opt-in (`fogline device --providers`): building its engines takes minutes.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def import_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError(
            "ONNX Runtime is not installed. On a CPU machine: pip install 'fogline[cpu]'; "
            "with an NVIDIA GPU and CUDA: pip install 'fogline[gpu]' (never both: they install "
            "the same module)."
        ) from None
    return onnxruntime


def choose_providers(available: list[str], requested: list[str] | None = None) -> list[str]:
    """The providers to ask for, best first: ``requested`` if given (must be available)."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ConfigError(f"execution providers {missing} are not available; this build has {available}")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


class OnnxRuntimeModel:
    """One InferenceSession for one model version. ``run`` blocks: call it off the event loop."""

    def __init__(self, config: ModelConfig, *, providers: list[str] | None = None) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        if config.intra_op_threads:
            options.intra_op_num_threads = config.intra_op_threads
        # NOTE: spinning worker threads burn the cores the gRPC event loop needs on a small device.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen = choose_providers(ort.get_available_providers(), providers)
        try:
            self._session = ort.InferenceSession(str(config.path), options, providers=chosen)
        except Exception as exc:
            if chosen == ["CPUExecutionProvider"]:
                raise ConfigError(f"{config.path}: ONNX Runtime cannot load it: {exc}") from None
            log.warning("model %s: providers %s failed (%s); falling back to CPU", config.name, chosen, exc)
            self._session = ort.InferenceSession(str(config.path), options, providers=["CPUExecutionProvider"])
        self.providers: list[str] = self._session.get_providers()
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.spec = ModelSpec(
            name=config.name,
            version=config.version,
            platform="onnxruntime_onnx",
            inputs=_merge(config.inputs, self._session.get_inputs(), config, "inputs"),
            outputs=_merge(config.outputs, self._session.get_outputs(), config, "outputs"),
            max_batch_size=config.max_batch_size,
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outputs, strict=True))


def _merge(declared: tuple[TensorSpec, ...] | None, actual: list[Any], config: ModelConfig,
           what: str) -> tuple[TensorSpec, ...]:
    """The tensors config.toml declares, checked against the model file's; the file's when it declares none."""
    from_file = tuple(_file_tensor(t, config) for t in actual)
    if declared is None:
        return from_file
    if [t.name for t in declared] != [t.name for t in from_file]:
        raise ConfigError(
            f"{config.config_file}: declares {what} {[t.name for t in declared]}, "
            f"the model file {config.path} has {[t.name for t in from_file]}"
        )
    for want, have in zip(declared, from_file, strict=True):
        if not _fits(want, have):
            raise ConfigError(
                f"{config.config_file}: {what} {want.name!r} is declared {_describe(want)}, but the model file "
                f"{config.path} has {_describe(have)}; declare its datatype, rank and fixed dimensions "
                "(-1 only where the file's dimension is free)"
            )
    return declared


def _file_tensor(arg: Any, config: ModelConfig) -> TensorSpec:
    """An ONNX Runtime ``NodeArg`` as a TensorSpec; -1 for a free (symbolic or unknown) dimension."""
    try:
        datatype = from_onnx_type(arg.type)
    except InvalidInputError as exc:
        raise ConfigError(f"{config.path}: tensor {arg.name!r}: {exc}") from None
    return TensorSpec(arg.name, datatype, tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape))


def _fits(declared: TensorSpec, actual: TensorSpec) -> bool:
    """Same datatype and rank, and every dimension the file fixes declared the same."""
    if declared.datatype != actual.datatype:
        return False
    if not actual.shape:
        return True  # NOTE: ONNX Runtime reports a tensor of unknown shape as rank 0: nothing to compare
    return len(declared.shape) == len(actual.shape) and all(
        have == -1 or want == have for want, have in zip(declared.shape, actual.shape, strict=True))


def _describe(tensor: TensorSpec) -> str:
    return f"{tensor.datatype} {list(tensor.shape)}"
