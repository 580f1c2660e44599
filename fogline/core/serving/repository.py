"""The model repository on disk: ``<root>/<model>/config.toml`` and ``<root>/<model>/<version>/<file>``,
where the file is ``model.onnx`` (platform ``onnxruntime``) or a TorchScript ``model.pt`` (``pytorch``).

``config.toml`` (every key optional; inputs and outputs default to what an ONNX file declares, and a
``pytorch`` model must declare them: a TorchScript file does not say what it takes)::

    name = "mlp"                   # the name it is served under (default: the directory's name)
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

The highest version directory is served unless a version is asked for (:func:`load_model`'s
``version``, a node's hot swap); every directory of a model is a version, named by a plain number
(``1``, ``2``, ``10``); :func:`model_versions` lists them. Names starting with ``.`` are ignored.
Nothing may resolve outside the repository (a symbolic link may point within it). Anything else is a
:class:`ConfigError` whose one-line message names the file and the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogline.core.serving.batching import BatchingSettings
from fogline.core.tensors import DATATYPES, TensorSpec
from fogline.core.toml import tomllib
from fogline.errors import echo_name, echo_names

PLATFORM_FILES = {"onnxruntime": "model.onnx", "pytorch": "model.pt"}
# Platforms whose model file carries no input/output signature: config.toml must declare it.
UNDESCRIBED_PLATFORMS = frozenset({"pytorch"})
VERSION_NAME = re.compile(r"[1-9][0-9]*")
_MISSING: Any = object()


class ConfigError(ValueError):
    """A model repository or configuration that cannot be served; the message, one line, names the file."""

    def __init__(self, message: str) -> None:
        # NOTE: the CLI prints it as one line; what ONNX Runtime or torch say may span several.
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One model version to serve, as its ``config.toml`` describes it."""

    name: str
    version: str
    path: Path
    platform: str = "onnxruntime"
    max_batch_size: int = 0
    intra_op_threads: int = 0
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None

    @property
    def config_file(self) -> Path:
        """The ``config.toml`` this came from (``<model>/config.toml``, beside the version directory)."""
        return self.path.parent.parent / "config.toml"


def load_repository(root: Path, names: Sequence[str] | None = None) -> list[ModelConfig]:
    """Every model under ``root`` (or just ``names``, model directory names), at its latest version."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"model repository {root} is not a directory")
    found = _model_dirs(root)
    if not found:
        raise ConfigError(f"model repository {root} has no models: a model is a directory <model>/ holding a "
                          "config.toml and a version directory <model>/1/ with model.onnx (or model.pt)")
    wanted = list(dict.fromkeys(names)) if names else sorted(found)
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ConfigError(f"model repository {root} has no model {missing}; it has {sorted(found)}")
    configs = [load_model(found[name], root=root) for name in wanted]
    _check_unique_names(configs)
    return configs


def load_model(model_dir: Path, *, root: Path | None = None, version: str | None = None) -> ModelConfig:
    """The model in ``model_dir`` at ``version`` (default: its latest); no file of it may resolve outside
    ``root``, the repository (default: the directory holding ``model_dir``)."""
    model_dir = Path(model_dir)
    root = model_dir.parent if root is None else Path(root)
    _check_inside(root, model_dir)
    config_path = model_dir / "config.toml"
    raw = _Table(_read_toml(config_path, root), config_path)
    platform = raw.string("platform", "onnxruntime", choices=PLATFORM_FILES)
    version, path = _version_file(model_dir, PLATFORM_FILES[platform], root, version)
    max_batch_size = raw.integer("max_batch_size", 0)
    inputs, outputs = _tensors(raw, "inputs"), _tensors(raw, "outputs")
    if platform in UNDESCRIBED_PLATFORMS and (not inputs or not outputs):
        raise ConfigError(
            f"{config_path}: platform {platform!r} needs [[inputs]] and [[outputs]] tables (name, datatype, "
            f"shape) in the order the model takes and returns them: {path.name} does not say what they are")
    return ModelConfig(
        name=raw.string("name", model_dir.name),
        version=version,
        path=path,
        platform=platform,
        max_batch_size=max_batch_size,
        intra_op_threads=raw.integer("intra_op_threads", 0),
        batching=_batching(raw.table("batching"), max_batch_size),
        inputs=inputs,
        outputs=outputs,
    )


def _model_dirs(root: Path) -> dict[str, Path]:
    """The model directories of ``root`` by name: its directories holding a config.toml."""
    dirs = {}
    for entry in _listing(root):
        if entry.is_dir():
            _check_inside(root, entry)
            if os.path.lexists(entry / "config.toml"):
                dirs[entry.name] = entry
    return dirs


def model_versions(model_dir: Path) -> list[str]:
    """The versions of the model in ``model_dir``, lowest first; every directory there must be a version."""
    versions = []
    for entry in _listing(Path(model_dir)):
        if not entry.is_dir():
            continue
        if not VERSION_NAME.fullmatch(entry.name):
            raise ConfigError(f"{entry}: a version directory is named by a plain number (1, 2, 10), "
                              f"not {entry.name!r}")
        versions.append(int(entry.name))
    return [str(v) for v in sorted(versions)]


def find_model_dir(root: Path, name: str) -> Path:
    """The directory of the model served as ``name`` in the repository ``root`` (its config's ``name``,
    else its directory's); ConfigError naming the models there when none is."""
    root = Path(root)
    found = _model_dirs(root) if root.is_dir() else {}
    for directory in found.values():
        if _served_name(directory, root) == name:
            return directory
    raise ConfigError(f"model repository {root} has no model {echo_name(name)}; it has {echo_names(sorted(found))}")


def list_models(root: Path) -> dict[str, list[str]]:
    """Served name -> versions on disk of every model under ``root`` whose config and versions can be read
    (a broken model is left out, not an error: this is an index, not a load)."""
    found: dict[str, list[str]] = {}
    root = Path(root)
    try:
        dirs = _model_dirs(root).values() if root.is_dir() else []
    except ConfigError:
        return found
    for directory in dirs:
        name = _served_name(directory, root)
        try:
            versions = model_versions(directory)
        except ConfigError:
            continue
        if name is not None:
            found[name] = versions
    return found


def _served_name(model_dir: Path, root: Path) -> str | None:
    """The name the model in ``model_dir`` is served under; None if its config cannot be read (another
    model's broken config must not hide this one)."""
    try:
        raw = _Table(_read_toml(model_dir / "config.toml", root), model_dir / "config.toml")
        return raw.string("name", model_dir.name)
    except ConfigError:
        return None


def _version_file(model_dir: Path, filename: str, root: Path, wanted: str | None) -> tuple[str, Path]:
    """A version of ``model_dir`` (``wanted``, default the highest) and its model file."""
    versions = model_versions(model_dir)
    if not versions:
        raise ConfigError(f"{model_dir}: no version directory (e.g. {model_dir}/1/{filename})")
    if wanted is not None and wanted not in versions:
        raise ConfigError(f"{model_dir}: no version {echo_name(wanted)}; it has {echo_names(versions)}")
    version = versions[-1] if wanted is None else wanted
    path = model_dir / version / filename
    _check_inside(root, path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    return version, path


def _listing(directory: Path) -> list[Path]:
    """The entries of ``directory``, those whose names start with "." left out."""
    try:
        return sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot list it: {exc}") from None


def _check_inside(root: Path, path: Path) -> None:
    """ConfigError unless ``path``, with every link followed, lies inside the repository ``root``."""
    try:
        real, real_root = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
        raise ConfigError(f"{path}: cannot resolve it: {exc}") from None
    if not real.is_relative_to(real_root):
        raise ConfigError(f"{path} resolves to {real}, outside the model repository {real_root}; "
                          "keep model directories and files inside it")


def _read_toml(config_path: Path, root: Path) -> dict[str, Any]:
    """The parsed ``config.toml``: a UTF-8 TOML file inside the repository."""
    _check_inside(root, config_path)
    if not config_path.is_file():
        raise ConfigError(f"{config_path} is a directory, not a file" if config_path.is_dir()
                          else f"{config_path} does not exist")
    try:
        return tomllib.loads(config_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{config_path}: not UTF-8 text, as TOML must be (byte {exc.object[exc.start]:#04x} "
                          f"on line {line})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None


def _check_unique_names(configs: Sequence[ModelConfig]) -> None:
    """ConfigError if two models would be served under one name."""
    claimed: dict[str, ModelConfig] = {}
    for config in configs:
        first = claimed.setdefault(config.name, config)
        if first is not config:
            raise ConfigError(f"{config.config_file}: name {config.name!r} is already the name of the model in "
                              f"{first.config_file}; each model needs a name of its own")


def _batching(table: _Table, max_batch_size: int) -> BatchingSettings:
    return BatchingSettings(
        max_batch_size=max_batch_size,
        max_queue_delay_us=table.integer("max_queue_delay_us", 0),
        max_queue_size=table.integer("max_queue_size", 256, minimum=1),
        instances=table.integer("instances", 1) or os.cpu_count() or 1,
        inline_max_us=table.integer("inline_max_us", 250),
    )


def _tensors(raw: _Table, key: str) -> tuple[TensorSpec, ...] | None:
    tables = raw.tables(key)
    if tables is None:
        return None
    specs = tuple(TensorSpec(t.string("name"), t.string("datatype", choices=DATATYPES), t.shape("shape"))
                  for t in tables)
    names = [spec.name for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"{raw.file}: {key} declares {twice} more than once")
    return specs


@dataclass(frozen=True)
class _Table:
    """One table of a config.toml, read key by key, each value checked for the type its key needs."""

    values: dict[str, Any]
    file: Path
    prefix: str = ""
    """Where the table is, for messages: "" at the top, "batching." or "inputs[0]." below."""

    def integer(self, key: str, default: int = _MISSING, *, minimum: int = 0) -> int:
        """An integer (not a bool) of at least ``minimum``; ``default`` when absent (required if none)."""
        value = self._get(key, default)
        if not _is_int(value) or value < minimum:
            raise self._wrong(key, f"an integer >= {minimum}", value)
        return int(value)

    def string(self, key: str, default: str = _MISSING, *, choices: Collection[str] | None = None) -> str:
        """A non-empty string, one of ``choices`` if given; ``default`` when absent (required if none)."""
        value = self._get(key, default)
        if not isinstance(value, str) or not value:
            raise self._wrong(key, "a non-empty string", value)
        if choices is not None and value not in choices:
            raise ConfigError(f"{self.file}: {self.prefix}{key} {value!r} is not one of {sorted(choices)}")
        return value

    def shape(self, key: str) -> tuple[int, ...]:
        """A required list of dimensions, each -1 (any size) or a size."""
        value = self._get(key, _MISSING)
        if not isinstance(value, list) or not all(_is_int(d) and d >= -1 for d in value):
            raise self._wrong(key, "a list of integers >= -1 (-1 = any size)", value)
        return tuple(value)

    def table(self, key: str) -> _Table:
        """The table ``[key]``; an empty one when absent."""
        value = self.values.get(key, {})
        if not isinstance(value, dict):
            raise self._wrong(key, f"a table ([{self.prefix}{key}])", value)
        return _Table(value, self.file, f"{self.prefix}{key}.")

    def tables(self, key: str) -> list[_Table] | None:
        """The array of tables ``[[key]]``; None when there is none."""
        value = self.values.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._wrong(key, f"an array of tables ([[{key}]] with name, datatype and shape)", value)
        return [_Table(v, self.file, f"{self.prefix}{key}[{i}].") for i, v in enumerate(value)]

    def _get(self, key: str, default: Any) -> Any:
        value = self.values.get(key, default)
        if value is _MISSING:
            raise ConfigError(f"{self.file}: {self.prefix}{key} is missing")
        return value

    def _wrong(self, key: str, expected: str, value: object) -> ConfigError:
        return ConfigError(f"{self.file}: {self.prefix}{key} must be {expected}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
