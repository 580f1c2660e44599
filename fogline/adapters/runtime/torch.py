"""PyTorch: TorchScript modules on CUDA when present, CPU otherwise (the GPU worker's runtime).

A TorchScript file has no V2 signature, so ``config.toml`` declares it: the declared inputs are
the module's positional arguments, in order; the module returns one tensor, or a tuple/list of
tensors in the declared output order, or a dict of tensors by output name. Outputs are cast to
their declared datatypes.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping

import numpy as np
import torch

from fogline.core.serving.repository import ConfigError, ModelConfig
from fogline.core.tensors import ModelSpec, numpy_dtype
from fogline.errors import InternalError

TORCH_DTYPES = {
    "BOOL": torch.bool, "INT8": torch.int8, "INT16": torch.int16, "INT32": torch.int32, "INT64": torch.int64,
    "UINT8": torch.uint8, "UINT16": torch.uint16, "UINT32": torch.uint32, "UINT64": torch.uint64,
    "FP16": torch.float16, "FP32": torch.float32, "FP64": torch.float64,
}


def choose_device(requested: str | None = None) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:N") if it can be had; by default CUDA if present, else CPU."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"unknown torch device {requested!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested, but CUDA is not available to torch "
                          f"{torch.__version__} (a CPU build, or no GPU/driver)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"torch device {requested!r} is not supported; use cpu, cuda or cuda:N")
    return device


def describe_device(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def memory_usage(device: torch.device) -> dict[str, int]:
    """Peak resident memory of this process, plus memory held by tensors on ``device`` when it is a GPU."""
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    usage = {"max_rss_bytes": max_rss if sys.platform == "darwin" else max_rss * 1024}  # Linux counts KiB
    if device.type == "cuda":
        usage["cuda_allocated_bytes"] = torch.cuda.memory_allocated(device)
        usage["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return usage


class TorchModel:
    """One TorchScript module for one model version. ``run`` blocks: call it off the event loop."""

    def __init__(self, config: ModelConfig, *, device: str | torch.device | None = None) -> None:
        if not config.inputs or not config.outputs:
            raise ConfigError(f"model {config.name!r}: a pytorch model needs its inputs and outputs declared "
                              f"in {config.path.parent.parent / 'config.toml'}")
        for tensor in (*config.inputs, *config.outputs):
            if tensor.datatype not in TORCH_DTYPES:
                raise ConfigError(f"model {config.name!r}: {tensor.name!r} is {tensor.datatype}, which PyTorch "
                                  f"tensors cannot hold; use one of {sorted(TORCH_DTYPES)}")
        self.device = device if isinstance(device, torch.device) else choose_device(device)
        if config.intra_op_threads:
            # NOTE: process-wide in PyTorch: the last model loaded with a setting decides.
            torch.set_num_threads(config.intra_op_threads)
        try:
            self._module = torch.jit.load(str(config.path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"{config.path}: not a TorchScript file torch.jit.load can read: {exc}") from None
        _check_arguments(self._module, config)
        self.providers = [describe_device(self.device)]
        self.spec = ModelSpec(name=config.name, version=config.version, platform="pytorch_libtorch",
                              inputs=config.inputs, outputs=config.outputs, max_batch_size=config.max_batch_size)
        self._output_dtypes = {t.name: TORCH_DTYPES[t.datatype] for t in config.outputs}
        self._warm_up(config)

    def _warm_up(self, config: ModelConfig) -> None:
        """Run one row of zeros where the declared shapes allow it, so that a declaration that does not fit
        the module fails at load, not on the first request (and CUDA kernels are ready before it)."""
        rows = (1,) if config.max_batch_size > 0 else ()
        shapes = [(*rows, *t.shape[len(rows):]) for t in self.spec.inputs]
        if any(d < 0 for shape in shapes for d in shape):
            return  # some dimension is free: no shape to try that is surely valid
        feeds = {t.name: np.zeros(shape, numpy_dtype(t.datatype))
                 for t, shape in zip(self.spec.inputs, shapes, strict=True)}
        try:
            self.run(feeds)
        except Exception as exc:
            raise ConfigError(f"model {config.name!r} ({config.path}) fails on zeros of its declared input "
                              f"shapes {[list(s) for s in shapes]}: {exc}") from None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            args = [self._tensor(feeds[spec.name]) for spec in self.spec.inputs]
            tensors = self._match_outputs(self._module(*args))
            return {name: self._array(name, tensor) for name, tensor in tensors.items()}

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        # NOTE: decoded request bytes are read-only and a module may write to its input in place.
        if not array.flags.writeable:
            array = array.copy()
        return torch.from_numpy(array).to(self.device, non_blocking=True)

    def _array(self, name: str, tensor: torch.Tensor) -> np.ndarray:
        return tensor.to(self._output_dtypes[name]).cpu().numpy()

    def _match_outputs(self, result: object) -> dict[str, torch.Tensor]:
        names = [t.name for t in self.spec.outputs]
        if isinstance(result, torch.Tensor):
            values: list[object] = [result]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        elif isinstance(result, Mapping):
            missing = [n for n in names if n not in result]
            if missing:
                raise InternalError(f"model {self.spec.name!r} returned a dict without {missing}; "
                                    f"it has {sorted(map(str, result))}")
            values = [result[n] for n in names]
        else:
            raise InternalError(f"model {self.spec.name!r} returned {type(result).__name__}; "
                                "expected a tensor, or a tuple, list or dict of tensors")
        if len(values) != len(names) or not all(isinstance(v, torch.Tensor) for v in values):
            raise InternalError(f"model {self.spec.name!r} returned {_describe(values)}; "
                                f"config.toml declares the outputs {names}")
        return dict(zip(names, values, strict=True))  # type: ignore[arg-type]


def _check_arguments(module: torch.jit.ScriptModule, config: ModelConfig) -> None:
    """ConfigError unless ``forward`` takes as many positional arguments as config.toml declares inputs."""
    schema = getattr(module.forward, "schema", None)
    if schema is None:
        return  # NOTE: not a scripted method (an unusual module): warm-up and requests will tell
    arguments = schema.arguments[1:]  # after self
    required = sum(1 for a in arguments if not a.has_default_value())
    declared = [t.name for t in config.inputs or ()]
    if not required <= len(declared) <= len(arguments):
        raise ConfigError(f"{config.config_file}: declares {len(declared)} inputs {declared}, but forward() of "
                          f"{config.path} takes {[a.name for a in arguments]} ({required} required)")


def _describe(values: list[object]) -> str:
    kinds = [f"tensor{list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in values]
    return f"{len(values)} outputs ({', '.join(kinds)})"
