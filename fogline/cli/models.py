"""``fogline models``: push model versions to the cloud master's registry, list and show them.

    fogline models push NAME PATH [--version N] [--note TEXT] [--config config.toml]
    fogline models list [--json]
    fogline models show NAME [--json]

PATH is an ONNX file, a TorchScript file (with ``--config``: it declares no inputs and outputs), or a
model directory (``config.toml`` beside version directories: the highest is pushed). The upload streams
to the admin API of the cloud master: ``--admin https://host:port`` with ``--admin-token-file`` and
``--tls-ca``, by default those of the running ``fogline up`` (its state file). Exit status: 0 done,
1 refused or unreachable, 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_STATE = Path.home() / ".fogline" / "stack.json"
MODEL_FILES = ("model.onnx", "model.pt")
READ_TIMEOUT_S = 600.0  # NOTE: the answer to a push comes once the model is validated


class ModelsUsageError(ValueError):
    """Flags or a path that cannot work (exit 2)."""


class RefusedError(RuntimeError):
    """The admin API refused or could not be reached (exit 1)."""


@dataclass(frozen=True)
class AdminTarget:
    """Where the admin API is and how to present oneself to it (the token itself is never printed)."""

    url: str
    token: str
    ssl: ssl.SSLContext | None


def add_parser(sub: argparse._SubParsersAction, default_home: Path | None = None) -> None:
    """Register ``fogline models`` and its subcommands."""
    state = (default_home / "stack.json") if default_home else DEFAULT_STATE
    models = sub.add_parser("models", help="the cloud master's model registry: push, list, show")
    commands = models.add_subparsers(dest="models_command", required=True)
    push = commands.add_parser("push", help="push a new version of a model (validated before it is accepted)")
    push.add_argument("name", help="the model's name")
    push.add_argument("path", type=Path, help="an ONNX file, a TorchScript file (with --config) or a model directory")
    push.add_argument("--version", type=int, help="its version number (default: the highest there is + 1)")
    push.add_argument("--note", default="", help="a note kept with the version")
    push.add_argument("--config", type=Path, help="config.toml to push with a model file (needed for TorchScript)")
    listing = commands.add_parser("list", help="the models in the registry")
    show = commands.add_parser("show", help="one model's versions")
    show.add_argument("name")
    for p in (push, listing, show):
        _target_flags(p, state)
    for p in (listing, show):
        p.add_argument("--json", action="store_true", help="print the registry's JSON")


def _target_flags(p: argparse.ArgumentParser, state: Path) -> None:
    p.add_argument("--admin", help="the cloud master's admin API, https://host:port (default: the running stack's)")
    p.add_argument("--admin-token-file", type=Path, help="file holding the admin token (default: the stack's)")
    p.add_argument("--tls-ca", type=Path, help="CA certificate to trust (default: the stack's)")
    p.add_argument("--state", type=Path, default=state, help=f"state file of `fogline up` (default {state})")


def run(args: argparse.Namespace) -> int:
    """Run the ``fogline models`` subcommand ``args`` names."""
    commands = {"push": _push, "list": _list, "show": _show}
    try:
        return asyncio.run(commands[args.models_command](args, target(args)))
    except ModelsUsageError as err:
        print(f"fogline models: {err}", file=sys.stderr)
        return 2
    except RefusedError as err:
        print(f"fogline models {args.models_command}: {err}", file=sys.stderr)
        return 1


def target(args: argparse.Namespace) -> AdminTarget:
    """The admin API the flags name, else the running stack's; ModelsUsageError if neither does."""
    state = _state(args.state) if not (args.admin and args.admin_token_file) else {}
    tls = state.get("tls") or {}
    url = args.admin or _stack_admin(state, args.state)
    token_file = args.admin_token_file or tls.get("admin_token_file")
    if not token_file:
        raise ModelsUsageError("no admin token: give --admin-token-file (the file the cloud master's "
                               "--admin-token-file names)")
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise ModelsUsageError(f"cannot read the admin token file {token_file}: {exc.strerror or exc}") from None
    ca = args.tls_ca or tls.get("ca")
    context = ssl.create_default_context(cafile=str(ca)) if url.startswith("https:") and ca else None
    return AdminTarget(url.rstrip("/"), token, context)


def _state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelsUsageError(f"cannot read the state file {path}: {exc}") from None
    return state if isinstance(state, dict) else {}


def _stack_admin(state: dict[str, Any], path: Path) -> str:
    address = (state.get("cloud") or {}).get("admin")
    if not address:
        raise ModelsUsageError(f"no --admin given and no running stack's cloud admin API ({path}); "
                               "give --admin https://host:port")
    return f"{'https' if state.get('tls') else 'http'}://{address}"


# --- the commands -----------------------------------------------------------------------------------

async def _push(args: argparse.Namespace, to: AdminTarget) -> int:
    query = {"note": args.note, **({"version": str(args.version)} if args.version is not None else {})}
    with tempfile.TemporaryDirectory(prefix="fogline-push-") as scratch:
        kind, body = upload_of(args.path, args.config, Path(scratch))
        path = f"/v1/admin/models/{quote(args.name, safe='')}?{urlencode({**query, 'kind': kind})}"
        with open(body, "rb") as f:
            record = await _call(to, "POST", path, data=f)
    print(f"pushed {record['name']} version {record['version']} ({_size(record['size_bytes'])}, "
          f"{record['platform']}, {record['upload_sha256']})")
    return 0


async def _list(args: argparse.Namespace, to: AdminTarget) -> int:
    models = await _call(to, "GET", "/v1/admin/models")
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no models in the registry", file=sys.stderr)
    for m in models:
        print(f"{m['name']:<24} v{m['latest']:<4} {m['versions']:>3} version(s)  {m['platform']:<12} "
              f"{_size(m['size_bytes']):>10}  {m['created']}  {m['note']}")
    return 0


async def _show(args: argparse.Namespace, to: AdminTarget) -> int:
    model = await _call(to, "GET", f"/v1/admin/models/{quote(args.name, safe='')}")
    if args.json:
        print(json.dumps(model, indent=2))
        return 0
    print(f"{model['name']} (latest version {model['latest']})")
    for v in model["versions"]:
        print(f"  v{v['version']:<4} {v['created']}  {v['platform']:<12} {_size(v['size_bytes']):>10}  "
              f"{', '.join(f'{p} {d}' for p, d in v['files'].items())}  {v['note']}")
    signature = model["versions"][-1].get("signature") or {}
    for what in ("inputs", "outputs"):
        for t in signature.get(what, []):
            print(f"  {what[:-1]:<6} {t['name']} {t['datatype']} {t['shape']}")
    return 0


async def _call(to: AdminTarget, method: str, path: str, **kwargs: Any) -> Any:
    """One admin request's JSON answer; RefusedError with the server's reason, or why it was not reached."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=READ_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {to.token}"}
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                http.request(method, to.url + path, headers=headers, ssl=to.ssl or True, **kwargs) as reply:
            body = await reply.json(content_type=None)
            status = reply.status
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise RefusedError(f"no answer from the admin API at {to.url}: {exc or type(exc).__name__}") from None
    if status >= 400:
        error = body if isinstance(body, dict) else {}
        raise RefusedError(f"{error.get('code', status)}: {error.get('error', 'refused')}")
    return body


# --- what a push uploads ----------------------------------------------------------------------------

def upload_of(path: Path, config: Path | None, scratch: Path) -> tuple[str, Path]:
    """(kind, file to upload) for ``path``: an ONNX file as it is; a model file with ``config`` or a
    model directory as a tar.gz of config.toml and one version directory, written under ``scratch``."""
    if path.is_dir():
        if config is not None:
            raise ModelsUsageError("--config goes with a model file; a directory has its own config.toml")
        return "dir", _pack(_directory_members(path), scratch)
    if not path.is_file():
        raise ModelsUsageError(f"{path} does not exist")
    if config is not None:
        if not config.is_file():
            raise ModelsUsageError(f"{config} does not exist")
        return "dir", _pack({"config.toml": config, f"1/{_model_file_name(path)}": path}, scratch)
    if path.suffix == ".pt":
        raise ModelsUsageError(f"{path} is a TorchScript file, which declares no inputs and outputs: give "
                               "--config config.toml (platform = \"pytorch\", [[inputs]], [[outputs]])")
    return "onnx", path


def _model_file_name(path: Path) -> str:
    if path.suffix not in (".onnx", ".pt"):
        raise ModelsUsageError(f"{path}: a model file ends in .onnx (ONNX) or .pt (TorchScript)")
    return f"model{path.suffix}"


def _directory_members(directory: Path) -> dict[str, Path]:
    """The files to push from a model directory: config.toml and the highest version directory (or a
    model file beside config.toml), by their path in the archive."""
    config = directory / "config.toml"
    if not config.is_file():
        raise ModelsUsageError(f"{directory} has no config.toml: a model directory holds config.toml and "
                               "a version directory (1/model.onnx)")
    versions = sorted((p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    members = {"config.toml": config}
    if versions:
        members.update({f"1/{f.relative_to(versions[-1]).as_posix()}": f for f in sorted(versions[-1].rglob("*"))
                        if f.is_file() and not f.name.startswith(".")})
    else:
        members.update({f"1/{name}": directory / name for name in MODEL_FILES if (directory / name).is_file()})
    if len(members) == 1:
        raise ModelsUsageError(f"{directory} has no model file (1/model.onnx, 1/model.pt or model.onnx)")
    return members


def _pack(members: dict[str, Path], scratch: Path) -> Path:
    archive = scratch / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, path in members.items():
            tar.add(path, arcname=name, recursive=False)
    return archive


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / (1024 * 1024):.1f} MiB"
