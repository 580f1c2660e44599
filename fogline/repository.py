"""The model repository on disk: ``<root>/<model>/config.toml`` and ``<root>/<model>/<version>/<file>``,
where the file is ``model.onnx`` (platform ``onnxruntime``) or a TorchScript ``model.pt`` (``pytorch``).

``config.toml`` (every key optional; inputs and outputs default to what an ONNX file declares, and a
``pytorch`` model must declare them: a TorchScript file does not say what it takes)::

    platform = "onnxruntime"       # or "pytorch" (GPU workers only)
    max_batch_size = 64            # 0: no batch dimension
    intra_op_threads = 0           # threads per run (ONNX Runtime; PyTorch: process-wide); 0 = its default

    [batching]
    max_queue_delay_us = 0
    max_queue_size = 256
    instances = 1                  # batches run at once; 0 = one per CPU core
    inline_max_us = 250            # run on the event loop while batches average under this much CPU

    [[inputs]]
    name = "input"
    datatype = "FP32"
    shape = [-1, 64]               # -1: any size; with max_batch_size > 0, dim 0 is the batch

The highest numeric version directory is served.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogline.batching import BatchingSettings
from fogline.datatypes import DATATYPES
from fogline.types import TensorSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLATFORM_FILES = {"onnxruntime": "model.onnx", "pytorch": "model.pt"}
# Platforms whose model file carries no input/output signature: config.toml must declare it.
UNDESCRIBED_PLATFORMS = frozenset({"pytorch"})


class ConfigError(ValueError):
    """A model repository or configuration that cannot be served; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str
    version: str
    path: Path
    platform: str = "onnxruntime"
    max_batch_size: int = 0
    intra_op_threads: int = 0
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None


def load_repository(root: Path, names: Sequence[str] | None = None) -> list[ModelConfig]:
    """Every model under ``root`` (or just ``names``), at its latest version."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"model repository {root} is not a directory")
    found = sorted(p.name for p in root.iterdir() if (p / "config.toml").is_file())
    missing = sorted(set(names or ()) - set(found))
    if missing:
        raise ConfigError(f"model repository {root} has no model {missing}; it has {found}")
    return [load_model(root / name) for name in (names or found)]


def load_model(model_dir: Path) -> ModelConfig:
    config_path = model_dir / "config.toml"
    try:
        raw = tomllib.loads(config_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    platform = raw.get("platform", "onnxruntime")
    if platform not in PLATFORM_FILES:
        raise ConfigError(f"{config_path}: platform {platform!r} is not one of {sorted(PLATFORM_FILES)}")
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ConfigError(f"{model_dir}: no version directory (e.g. {model_dir}/1/{PLATFORM_FILES[platform]})")
    version = str(versions[-1])
    path = model_dir / version / PLATFORM_FILES[platform]
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    max_batch_size = _int(raw, "max_batch_size", 0, config_path)
    batching = raw.get("batching", {})
    inputs, outputs = _tensors(raw, "inputs", config_path), _tensors(raw, "outputs", config_path)
    if platform in UNDESCRIBED_PLATFORMS and (not inputs or not outputs):
        raise ConfigError(
            f"{config_path}: platform {platform!r} needs [[inputs]] and [[outputs]] tables (name, datatype, "
            f"shape) in the order the model takes and returns them: {path.name} does not say what they are")
    return ModelConfig(
        name=raw.get("name", model_dir.name),
        version=version,
        path=path,
        platform=platform,
        max_batch_size=max_batch_size,
        intra_op_threads=_int(raw, "intra_op_threads", 0, config_path),
        batching=BatchingSettings(
            max_batch_size=max_batch_size,
            max_queue_delay_us=_int(batching, "max_queue_delay_us", 0, config_path),
            max_queue_size=_int(batching, "max_queue_size", 256, config_path, minimum=1),
            instances=_int(batching, "instances", 1, config_path) or os.cpu_count() or 1,
            inline_max_us=_int(batching, "inline_max_us", 250, config_path),
        ),
        inputs=inputs,
        outputs=outputs,
    )


def _int(table: dict[str, Any], key: str, default: int, path: Path, minimum: int = 0) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{path}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _tensors(raw: dict[str, Any], key: str, path: Path) -> tuple[TensorSpec, ...] | None:
    if key not in raw:
        return None
    specs = []
    for entry in raw[key]:
        try:
            spec = TensorSpec(str(entry["name"]), str(entry["datatype"]), tuple(int(d) for d in entry["shape"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: each of {key} needs name, datatype and shape ({exc})") from None
        if spec.datatype not in DATATYPES:
            raise ConfigError(f"{path}: {key} {spec.name!r} has unknown datatype {spec.datatype!r}")
        specs.append(spec)
    return tuple(specs)
