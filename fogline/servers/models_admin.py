"""The cloud master's model registry over REST: pushes on the admin API, reads on both APIs.

Admin API (behind the admin credential, ``fogline.adapters.http.admin``):

- ``POST /v1/admin/models/{name}?kind=onnx|dir[&version=N][&note=TEXT]``: push a version. The body
  streams to a staging directory under the store, hashed as it comes, up to ``max_model_bytes``
  (over it: 413, RESOURCE_EXHAUSTED). ``kind=onnx``: the body is an ONNX file, served on ONNX
  Runtime with the signature the file declares. ``kind=dir``: a tar.gz of a model directory
  (``config.toml`` and ``1/model.onnx`` or ``1/model.pt``, or the model file beside the config).
  A TorchScript file declares no signature, so a ``pytorch`` model comes as a ``dir`` (``fogline
  models push NAME model.pt --config config.toml`` packs one). The version is validated in a
  subprocess (``fogline.adapters.runtime.validate``), then added to the registry; any failure
  removes what was received and answers 400 with the reason. 201 with the version's record.
- ``GET /v1/admin/models``, ``GET /v1/admin/models/{name}``.

REST status port (read-only, no credential, as the rest of status): ``GET /v1/models`` and
``GET /v1/models/{name}``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import shutil
import tarfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

from aiohttp import web

from fogline.adapters.http.admin import AdminRoute
from fogline.adapters.runtime.validate import DEFAULT_TIMEOUT_S, validate_model
from fogline.core.lifecycle.registry import ModelRecord, ModelRegistry, check_model_name
from fogline.core.serving.repository import PLATFORM_FILES, VERSION_NAME
from fogline.errors import (
    InvalidInputError,
    OverloadedError,
    PayloadTooLargeError,
    UnavailableError,
    echo_name,
)

MiB = 1024 * 1024
DEFAULT_MAX_MODEL_BYTES = 512 * MiB
CHUNK_BYTES = MiB
KINDS = ("onnx", "dir")
NOTE_MAX_CHARS = 500
TAR_MAX_MEMBERS = 256
REGISTRY_OFF = "the model registry is off: start the cloud master with --model-store DIR"
PYTORCH_FILE = ("a TorchScript file declares no inputs and outputs: push a directory with config.toml "
                "(kind=dir), e.g. `fogline models push NAME model.pt --config config.toml`")
ONNX_CONFIG = 'platform = "onnxruntime"\n'


class ModelRoutes:
    """The registry's routes; ``registry`` None (no ``--model-store``) answers every one UNAVAILABLE."""

    def __init__(self, registry: ModelRegistry | None, *, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
                 validate_timeout_s: float = DEFAULT_TIMEOUT_S, max_concurrent_pushes: int = 2) -> None:
        self._store = registry
        self.max_model_bytes = max_model_bytes
        self.validate_timeout_s = validate_timeout_s
        self.max_concurrent_pushes = max_concurrent_pushes
        self._pushing = 0

    @property
    def registry(self) -> ModelRegistry:
        """The registry; UnavailableError when it is off."""
        if self._store is None:
            raise UnavailableError(REGISTRY_OFF)
        return self._store

    def admin_routes(self) -> dict[tuple[str, str], AdminRoute]:
        """The admin API's model routes."""
        return {("POST", "/v1/admin/models/{name}"): self.push, ("GET", "/v1/admin/models"): self.list_models,
                ("GET", "/v1/admin/models/{name}"): self.show_model}

    def status_routes(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        """The read-only routes of the REST status port."""
        return {"/v1/models": self.models, "/v1/models/{name}": self.model}

    # --- reads -------------------------------------------------------------------------------------

    async def models(self) -> Any:
        """Every model: name, latest version, how many versions, and the latest's platform and size."""
        return [_summary(m) for m in self.registry.list()]

    async def model(self, name: str) -> Any:
        """One model and all its versions."""
        return self.registry.show(name).to_json()

    async def list_models(self, request: web.Request) -> Any:
        """``GET /v1/admin/models``."""
        return await self.models()

    async def show_model(self, request: web.Request) -> Any:
        """``GET /v1/admin/models/{name}``."""
        return await self.model(request.match_info["name"])

    # --- the push ----------------------------------------------------------------------------------

    async def push(self, request: web.Request) -> Any:
        """``POST /v1/admin/models/{name}``: receive, unpack, validate and add one version."""
        registry = self.registry
        name = check_model_name(request.match_info["name"])
        kind, version, note = _query(request)
        if version is not None:
            registry.check_version_free(name, version)
        if self._pushing >= self.max_concurrent_pushes:
            raise OverloadedError(f"{self._pushing} pushes are in progress; try again shortly", retry_after_s=5)
        self._pushing += 1
        staging = registry.new_staging()
        try:
            return await self._push(request, registry, staging, name, kind, version, note)
        except PayloadTooLargeError as err:
            return web.json_response({"error": err.message, "code": err.code.value}, status=413)
        except OSError as exc:
            raise UnavailableError(f"the model store cannot take the upload: {exc.strerror or exc}") from None
        finally:
            self._pushing -= 1
            shutil.rmtree(staging, ignore_errors=True)

    async def _push(self, request: web.Request, registry: ModelRegistry, staging: Path, name: str, kind: str,
                    version: int | None, note: str) -> web.Response:
        model_dir = staging / "model" / name
        upload = model_dir / "1" / PLATFORM_FILES["onnxruntime"] if kind == "onnx" else staging / "upload.tar.gz"
        upload.parent.mkdir(parents=True, exist_ok=True)
        size, sha256 = await self._receive(request, upload)
        if kind == "onnx":
            (model_dir / "config.toml").write_text(ONNX_CONFIG)
        else:
            await asyncio.to_thread(unpack_model, upload, staging / "unpacked", model_dir, self.max_model_bytes)
            upload.unlink()
        summary = await validate_model(model_dir, timeout_s=self.validate_timeout_s)
        if summary.name != name:
            raise InvalidInputError(f"config.toml names the model {echo_name(summary.name)}, but it is pushed as "
                                    f"{echo_name(name)}: remove its name key or make the two agree")
        record = await asyncio.to_thread(registry.add, name, model_dir, version=version, note=note,
                                         signature=summary.to_json())
        return web.json_response({**record.to_json(), "upload_bytes": size, "upload_sha256": sha256}, status=201)

    async def _receive(self, request: web.Request, path: Path) -> tuple[int, str]:
        """Stream the body to ``path``, hashing it; PayloadTooLargeError past the limit."""
        if (request.content_length or 0) > self.max_model_bytes:
            raise self._too_large()
        digest, size = hashlib.sha256(), 0
        with open(path, "wb") as f:
            async for chunk in request.content.iter_chunked(CHUNK_BYTES):
                size += len(chunk)
                if size > self.max_model_bytes:
                    raise self._too_large()
                digest.update(chunk)
                f.write(chunk)
        if size == 0:
            raise InvalidInputError("the upload is empty: send the model file (or its tar.gz) as the body")
        return size, "sha256:" + digest.hexdigest()

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"model over {self.max_model_bytes / MiB:g} MiB, the cloud master's limit "
                                    "(--max-model-mb)")


def _query(request: web.Request) -> tuple[str, int | None, str]:
    """(kind, version, note) from the query; InvalidInputError for a bad one."""
    query = request.query
    kind = query.get("kind", "onnx")
    if kind == "pytorch":
        raise InvalidInputError(PYTORCH_FILE)
    if kind not in KINDS:
        raise InvalidInputError(f"kind {echo_name(kind)} is not one of {list(KINDS)}")
    text = query.get("version")
    if text is not None and not VERSION_NAME.fullmatch(text):
        raise InvalidInputError(f"version {echo_name(text)} is not valid: a version is a number from 1")
    note = query.get("note", "")
    if len(note) > NOTE_MAX_CHARS or not note.isprintable():
        raise InvalidInputError(f"the note must be printable and at most {NOTE_MAX_CHARS} characters")
    return kind, None if text is None else int(text), note


def _summary(model: ModelRecord) -> dict[str, Any]:
    latest = model.latest
    return {"name": model.name, "latest": latest.version, "versions": len(model.versions),
            "platform": latest.platform, "size_bytes": latest.size_bytes, "created": latest.created,
            "note": latest.note}


# --- tar.gz uploads ---------------------------------------------------------------------------------

def unpack_model(archive: Path, unpacked: Path, model_dir: Path, max_bytes: int) -> None:
    """Unpack the tar.gz ``archive`` of a model directory into ``unpacked``, then arrange it as
    ``model_dir`` (``config.toml`` and one version directory). InvalidInputError for a truncated or
    corrupt archive, absolute or ``..`` paths, links, devices, or more than ``max_bytes`` unpacked."""
    unpacked.mkdir()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            _extract(tar, unpacked, max_bytes)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidInputError(f"the upload is not a complete tar.gz archive: {exc}") from None
    _arrange(unpacked, model_dir)


def _extract(tar: tarfile.TarFile, into: Path, max_bytes: int) -> None:
    total, count = 0, 0
    for member in tar:
        count += 1
        if count > TAR_MAX_MEMBERS:
            raise InvalidInputError(f"the archive holds over {TAR_MAX_MEMBERS} entries; a model holds a few files")
        parts = _member_parts(member)
        if parts is None:
            continue
        target = into.joinpath(*parts)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        total += member.size
        if total > max_bytes:
            raise PayloadTooLargeError(f"model over {max_bytes / MiB:g} MiB unpacked, the cloud master's limit "
                                       "(--max-model-mb)")
        _write_member(tar, member, target)


def _member_parts(member: tarfile.TarInfo) -> tuple[str, ...] | None:
    """The path parts of a regular file or directory inside the archive; None for one to skip (``.``
    and hidden files, which a repository ignores); InvalidInputError for anything unsafe."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidInputError(f"the archive has the path {echo_name(member.name)}: paths must be relative, "
                                "without '..'")
    if not (member.isreg() or member.isdir()):
        raise InvalidInputError(f"the archive's {echo_name(member.name)} is a link or a special file; "
                                "a model holds regular files only")
    parts = tuple(p for p in path.parts if p != ".")
    if not parts or any(p.startswith(".") for p in parts):
        return None
    return parts


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    assert source is not None  # NOTE: a regular file always has contents
    target.parent.mkdir(parents=True, exist_ok=True)
    with source, open(target, "xb") as f:
        shutil.copyfileobj(source, f, CHUNK_BYTES)


def _arrange(unpacked: Path, model_dir: Path) -> None:
    """Move the unpacked model to ``model_dir``: into a lone top directory if the archive has one, and
    a model file beside config.toml into version directory ``1/``."""
    root = unpacked
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (root / "config.toml").exists():
        root = entries[0]
    if not (root / "config.toml").is_file():
        raise InvalidInputError("the archive has no config.toml at its top (or in its one top directory)")
    loose = [root / f for f in PLATFORM_FILES.values() if (root / f).is_file()]
    if loose:
        (root / "1").mkdir(exist_ok=True)
        for path in loose:
            path.rename(root / "1" / path.name)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    root.rename(model_dir)

