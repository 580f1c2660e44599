"""The model registry of the cloud master: pushed model versions, content-addressed, on disk.

Layout of the store directory::

    <store>/index.json              name -> versions -> files, config, platform, size, created, note
    <store>/blobs/sha256/<hex>      every file once, named by its digest (read-only)
    <store>/staging/                uploads being received and validated (emptied on open)

A version is added from a *staged* directory holding one model version in the repository layout
(``config.toml`` beside one version directory, e.g. ``1/model.onnx``). Its files go into the blob
store first, each through a temporary file and a rename, then the index is rewritten (a temporary
file, fsync, ``os.replace``): a crash at any point leaves the previous index valid, and at worst
blobs no version names yet. Everything is on disk, so the registry survives a restart::

    registry = ModelRegistry(Path("/var/lib/fogline/registry"))
    record = registry.add("mlp", staged, note="retrained")   # version: highest + 1
    registry.version("mlp", record.version).files             # {"model.onnx": "sha256:..."}
    registry.blob_path(record.files["model.onnx"])            # where its bytes are
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from fogline.core.serving.repository import VERSION_NAME, ConfigError
from fogline.core.toml import tomllib
from fogline.errors import InvalidInputError, ModelNotFoundError, echo_name, echo_names

INDEX_FORMAT = 1
DIGEST_PREFIX = "sha256:"
CHUNK_BYTES = 1024 * 1024
CONFIG_MAX_BYTES = 64 * 1024
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = ("a model name is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit "
             "(it becomes a directory name in every model repository)")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class RegistryError(ConfigError):
    """A store that cannot be opened (an unreadable or corrupt index): the operator's to fix."""


@dataclass(frozen=True, kw_only=True)
class VersionRecord:
    """One pushed version of a model: its files by path (relative to the version directory) and digest."""

    name: str
    version: int
    files: dict[str, str]
    """Files of the version directory, by relative path: ``sha256:<hex>`` digests."""
    config_digest: str
    config_text: str
    """The ``config.toml`` beside the version directory."""
    platform: str
    size_bytes: int
    """The files and the config together."""
    created: str
    """When it was added, ISO 8601 UTC."""
    note: str = ""
    signature: dict[str, Any] = field(default_factory=dict)
    """What validation found it takes and returns (inputs, outputs, max_batch_size), when given."""

    def to_json(self) -> dict[str, Any]:
        """The record as the index and the APIs carry it."""
        return asdict(self)


@dataclass(frozen=True)
class ModelRecord:
    """A model and its versions, oldest first."""

    name: str
    versions: tuple[VersionRecord, ...]

    @property
    def latest(self) -> VersionRecord:
        """The highest version."""
        return self.versions[-1]

    def to_json(self) -> dict[str, Any]:
        """The model as the APIs carry it: its latest version number and every version."""
        return {"name": self.name, "latest": self.latest.version,
                "versions": [v.to_json() for v in self.versions]}


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name; InvalidInputError saying the rule otherwise."""
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidInputError(f"model name {echo_name(name)} is not valid: {NAME_RULE}")
    return name


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return DIGEST_PREFIX + digest.hexdigest()


class ModelRegistry:
    """The model versions pushed to this store (see the module docstring). Thread-safe: ``add`` may
    run in a worker thread while the event loop reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.index_file = self.directory / "index.json"
        self.blobs = self.directory / "blobs" / "sha256"
        self.staging = self.directory / "staging"
        self._lock = threading.Lock()
        self.blobs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)  # NOTE: uploads a crash interrupted; never indexed
        self.staging.mkdir()
        self._models = self._read_index()

    # --- reading -----------------------------------------------------------------------------------

    def list(self) -> list[ModelRecord]:
        """Every model, by name."""
        with self._lock:
            return [self._record(name) for name in sorted(self._models)]

    def show(self, name: str) -> ModelRecord:
        """The model ``name``; ModelNotFoundError naming the models there are."""
        with self._lock:
            if name not in self._models:
                has = f"it has {echo_names(sorted(self._models))}" if self._models else "it is empty"
                raise ModelNotFoundError(f"no model {echo_name(name)} in the registry; {has}")
            return self._record(name)

    def version(self, name: str, version: int) -> VersionRecord:
        """Version ``version`` of ``name``; ModelNotFoundError naming the versions there are."""
        model = self.show(name)
        for record in model.versions:
            if record.version == version:
                return record
        raise ModelNotFoundError(f"model {echo_name(name)} has no version {version}; it has "
                                 f"{[v.version for v in model.versions]}")

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``digest`` (``sha256:<hex>``) is; ModelNotFoundError if the store has none."""
        if not _DIGEST.fullmatch(digest):
            raise InvalidInputError(f"digest {echo_name(digest)} is not sha256:<64 hex digits>")
        path = self.blobs / digest.removeprefix(DIGEST_PREFIX)
        if not path.is_file():
            raise ModelNotFoundError(f"no blob {digest} in the registry")
        return path

    def open_blob(self, digest: str) -> IO[bytes]:
        """The blob ``digest``, open for reading."""
        return open(self.blob_path(digest), "rb")

    def new_staging(self) -> Path:
        """A fresh, empty directory under the store for one upload (same file system as the blobs);
        the caller removes it. Whatever is left there is removed when the store is next opened."""
        path = self.staging / uuid.uuid4().hex
        path.mkdir()
        return path

    # --- adding ------------------------------------------------------------------------------------

    def add(self, name: str, staged: Path, *, version: int | None = None, note: str = "",
            signature: Mapping[str, Any] | None = None) -> VersionRecord:
        """Add the model version in ``staged`` (``config.toml`` and one version directory) as version
        ``version`` of ``name`` (None: the highest there is + 1). InvalidInputError for an existing
        version, a bad name or layout. ``staged`` is copied, not moved."""
        check_model_name(name)
        if version is not None and version < 1:
            raise InvalidInputError(f"version {version} is not valid: versions are numbered from 1")
        config, files = staged_files(Path(staged))
        with self._lock:
            number = self._next_version(name) if version is None else self._free_version(name, version)
            digests = {rel: self._store_blob(path) for rel, path in files.items()}
            record = VersionRecord(
                name=name, version=number, files=digests, config_digest=self._store_blob(config),
                config_text=config.read_text(encoding="utf-8", errors="replace"),
                platform=_platform(config), size_bytes=sum(p.stat().st_size for p in (config, *files.values())),
                created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
                note=note, signature=dict(signature or {}))
            models = {n: dict(v) for n, v in self._models.items()}
            models.setdefault(name, {})[number] = record
            self._write_index(models)
            self._models = models
        return record

    def check_version_free(self, name: str, version: int) -> None:
        """InvalidInputError if version ``version`` of ``name`` exists (to refuse a push before its upload)."""
        with self._lock:
            self._free_version(name, version)

    def _next_version(self, name: str) -> int:
        return max(self._models.get(name, {0: None}), default=0) + 1

    def _free_version(self, name: str, version: int) -> int:
        if version in self._models.get(name, {}):
            raise InvalidInputError(f"version {version} of {name} exists; push without a version to get "
                                    f"{self._next_version(name)}, or choose another")
        return version

    def _store_blob(self, source: Path) -> str:
        """Copy ``source`` into the blob store (unless a blob of its digest is there); its digest."""
        tmp = self.blobs / f".tmp-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        try:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK_BYTES):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            target = self.blobs / digest.hexdigest()
            if not target.is_file():
                os.chmod(tmp, 0o444)
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return DIGEST_PREFIX + digest.hexdigest()

    # --- the index ---------------------------------------------------------------------------------

    def _record(self, name: str) -> ModelRecord:
        versions = self._models[name]
        return ModelRecord(name, tuple(versions[v] for v in sorted(versions)))

    def _read_index(self) -> dict[str, dict[int, VersionRecord]]:
        if not self.index_file.exists():
            return {}
        try:
            raw = json.loads(self.index_file.read_text(encoding="utf-8"))
            return {name: {int(v): VersionRecord(**r) for v, r in model["versions"].items()}
                    for name, model in raw["models"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(f"{self.index_file}: the model registry's index cannot be read ({exc}); "
                                "restore it from a backup or move the store aside") from None

    def _write_index(self, models: Mapping[str, Mapping[int, VersionRecord]]) -> None:
        """Replace the index with ``models`` atomically: a reader (or a crash) sees the old or the new."""
        body = {"format": INDEX_FORMAT,
                "models": {name: {"versions": {str(v): r.to_json() for v, r in sorted(versions.items())}}
                           for name, versions in sorted(models.items())}}
        tmp = self.index_file.with_name(f".index.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(body, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.index_file)
        finally:
            tmp.unlink(missing_ok=True)


def staged_files(staged: Path) -> tuple[Path, dict[str, Path]]:
    """The ``config.toml`` of a staged model version and the files of its one version directory, by
    path relative to it; InvalidInputError for any other layout, links or special files."""
    entries = sorted(p for p in staged.iterdir())
    config = staged / "config.toml"
    if not config.is_file() or config.is_symlink():
        raise InvalidInputError("the model has no config.toml beside its version directory")
    if config.stat().st_size > CONFIG_MAX_BYTES:
        raise InvalidInputError(f"config.toml is over {CONFIG_MAX_BYTES // 1024} KiB: a config is a few lines")
    dirs = [p for p in entries if p.is_dir() and not p.is_symlink()]
    others = [p.name for p in entries if p != config and p not in dirs]
    if len(dirs) != 1 or others or not VERSION_NAME.fullmatch(dirs[0].name):
        raise InvalidInputError(f"a model version is config.toml and one version directory (e.g. 1/model.onnx); "
                                f"found {echo_names(p.name for p in entries)}")
    return config, _regular_files(dirs[0])


def _regular_files(root: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise InvalidInputError(f"{path.relative_to(root)} is a link or a special file; a model holds "
                                    "regular files only")
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path
    if not files:
        raise InvalidInputError(f"version directory {root.name}/ is empty")
    return files


def _platform(config: Path) -> str:
    """The platform ``config.toml`` names (the repository's default when it names none)."""
    try:
        value = tomllib.loads(config.read_text(encoding="utf-8")).get("platform", "onnxruntime")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise InvalidInputError("config.toml is not valid UTF-8 TOML") from None
    return value if isinstance(value, str) else "onnxruntime"
