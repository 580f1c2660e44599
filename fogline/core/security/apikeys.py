"""API keys for inference: who may call, and which models each caller may use.

A caller sends its key as gRPC metadata ``authorization: Bearer <key>``. The keys file (TOML) holds
for each key a name (what logs and metrics show instead of the key), the SHA-256 of the key, and
optionally the models it may use::

    [[key]]
    name = "alice"
    sha256 = "<hex of sha256(key)>"
    models = ["mlp", "cnn"]   # absent: every model

The file never holds a key in clear: :func:`create_key` makes one, appends its entry and returns the key,
the only time it exists outside its owner's hands. :class:`ApiKeys` serves the file and picks up its
changes (a key added or revoked) without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogline.core.toml import tomllib
from fogline.errors import PermissionDeniedError, UnauthenticatedError, echo_name

log = logging.getLogger(__name__)

KEY_PREFIX = "fogline-ak-"
"""What every key starts with: a key pasted where it should not be is easy to recognise (and to scan for)."""
MISSING_KEY = "missing API key: send metadata 'authorization: Bearer <key>'"
INVALID_KEY = "API key not valid"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
NAME_RULE = "1-64 letters, digits, dots, underscores, hyphens or @, starting with a letter or digit"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = frozenset({"name", "sha256", "models"})


@dataclass(frozen=True)
class KeyEntry:
    """One key of the file: its name, the hex SHA-256 of the key, and the models it may use (None: all)."""

    name: str
    sha256: str
    models: frozenset[str] | None = None

    def allows(self, model: str) -> bool:
        """Whether this key may use ``model``."""
        return self.models is None or model in self.models


def digest(key: str) -> str:
    """The hex SHA-256 of ``key``, as the keys file stores it."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def read_keys(path: Path) -> list[KeyEntry]:
    """The entries of the keys file at ``path``; ValueError naming the file and what is wrong with it.

    NOTE: no message here repeats a ``sha256`` value or any text of the file's: they are logged."""
    try:
        raw = tomllib.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ValueError(f"API keys file {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"API keys file {path}: not UTF-8 text, as TOML must be") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"API keys file {path}: not valid TOML: {exc}") from None
    return _parse_file(raw, str(path))


def _parse_file(raw: dict[str, Any], where: str) -> list[KeyEntry]:
    extra = sorted(set(raw) - {"key"})
    if extra:
        raise ValueError(f"API keys file {where}: unknown top-level keys {extra[:5]}; write each key as [[key]]")
    tables = raw.get("key", [])
    if not isinstance(tables, list):
        raise ValueError(f"API keys file {where}: 'key' must be an array of tables: write each key as [[key]]")
    entries = [_parse_entry(table, f"API keys file {where}, key #{i + 1}") for i, table in enumerate(tables)]
    _check_unique(entries, where)
    return entries


def _parse_entry(table: Any, where: str) -> KeyEntry:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: must be a table ([[key]])")
    # NOTE: an unknown field is refused, not ignored: a "model = ..." typo would otherwise allow every model.
    extra = sorted(set(table) - _FIELDS)
    if extra:
        raise ValueError(f"{where}: unknown fields {extra[:5]}; a key has name, sha256 and optionally models")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: name must be {NAME_RULE}")
    sha = table.get("sha256")
    if not isinstance(sha, str) or not _SHA256_HEX.match(sha.lower()):
        raise ValueError(f"{where} ({name!r}): sha256 must be the 64 hex digits of the key's SHA-256")
    return KeyEntry(name=name, sha256=sha.lower(), models=_parse_models(table, f"{where} ({name!r})"))


def _parse_models(table: dict[str, Any], where: str) -> frozenset[str] | None:
    if "models" not in table:
        return None
    models = table["models"]
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise ValueError(f"{where}: models must be a non-empty list of model names; "
                         "leave it out to allow every model")
    return frozenset(models)


def _check_unique(entries: Iterable[KeyEntry], where: str) -> None:
    names: set[str] = set()
    hashes: set[str] = set()
    for entry in entries:
        if entry.name in names:
            raise ValueError(f"API keys file {where}: two keys are named {entry.name!r}; names must be unique")
        if entry.sha256 in hashes:
            raise ValueError(f"API keys file {where}: key {entry.name!r} has the same sha256 as another key")
        names.add(entry.name)
        hashes.add(entry.sha256)


def create_key(path: Path, *, name: str, models: Sequence[str] = ()) -> str:
    """A new key named ``name``, allowed ``models`` (empty: every model), appended to the keys file at
    ``path`` (created, readable by its owner only, if missing). ValueError for a name already there, a
    name that breaks :data:`NAME_RULE` or a file that does not read. The returned key is stored nowhere."""
    path = Path(path)
    if not _NAME.match(name):
        raise ValueError(f"key name {name[:80]!r} is not valid: use {NAME_RULE}")
    if any(not m for m in models):
        raise ValueError("a model name cannot be empty")
    existing = read_keys(path) if path.exists() else []
    if any(entry.name == name for entry in existing):
        raise ValueError(f"API keys file {path}: a key named {name!r} already exists; choose another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    _append(path, _entry_text(name, digest(key), models))
    return key


def _entry_text(name: str, sha256: str, models: Sequence[str]) -> str:
    lines = ["", "[[key]]", f"name = {_toml_string(name)}", f'sha256 = "{sha256}"']
    if models:
        lines.append(f"models = [{', '.join(_toml_string(m) for m in dict.fromkeys(models))}]")
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    escaped = (c if c not in '"\\' and c >= " " and c != "\x7f" else _escape(c) for c in text)
    return '"' + "".join(escaped) + '"'


def _escape(char: str) -> str:
    return "\\" + char if char in '"\\' else f"\\u{ord(char):04x}"


def _append(path: Path, text: str) -> None:
    """Append ``text`` in one write. NOTE: appending (not rewriting) keeps the file's comments, and two
    creators at once both land; a server reading half an entry keeps its keys until the file is whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _bearer(authorization: str | None) -> str:
    """The key in an ``authorization`` value ``Bearer <key>``; UnauthenticatedError for anything else."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise UnauthenticatedError(MISSING_KEY)
    return key


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


class ApiKeys:
    """The keys of one keys file, re-read when the file changes (checked at most every ``recheck_s``
    seconds of ``clock``). A file that does not load at start is a ValueError; one that does not load
    later is logged, and the keys read last keep serving."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic, recheck_s: float = 1.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._recheck_s = recheck_s
        self._stamp = _stamp_or_error(self.path)
        self._by_hash = _index(read_keys(self.path))
        self._checked_at = clock()

    def __len__(self) -> int:
        return len(self._by_hash)

    def check(self, authorization: str | None, model: str) -> str:
        """The name of the key in ``authorization`` if it may use ``model``: UnauthenticatedError for no
        key or an unknown one, PermissionDeniedError for a key not allowed the model."""
        entry = self._entry(authorization)
        if not entry.allows(model):
            raise PermissionDeniedError(f"API key {entry.name!r} may not use model {echo_name(model)}")
        return entry.name

    def check_any(self, authorization: str | None) -> str:
        """The name of the key in ``authorization``, whatever models it may use (a call that names none)."""
        return self._entry(authorization).name

    def _entry(self, authorization: str | None) -> KeyEntry:
        self._maybe_reload()
        presented = digest(_bearer(authorization))
        entry = self._by_hash.get(presented)
        # NOTE: the dict compares hashes of the presented key, not keys, so its early-exit comparison can
        # leak at most how much of an unknown SHA-256 matches: useless without a preimage. compare_digest
        # still makes the deciding comparison constant-time, so the check does not rest on that argument.
        if entry is None or not hmac.compare_digest(entry.sha256, presented):
            raise UnauthenticatedError(INVALID_KEY)
        return entry

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked_at < self._recheck_s:
            return
        self._checked_at = now
        try:
            stamp = _stamp(self.path)
        except OSError as exc:
            log.error("API keys file %s cannot be read (%s); keeping the %d keys read last",
                      self.path, exc.strerror or exc, len(self._by_hash))
            return
        if stamp != self._stamp:
            self._stamp = stamp  # NOTE: a bad file is reported once per change, not on every check
            self._reload()

    def _reload(self) -> None:
        try:
            self._by_hash = _index(read_keys(self.path))
        except ValueError as exc:
            log.error("%s; keeping the %d keys read last", exc, len(self._by_hash))
            return
        log.info("API keys reloaded from %s: %d keys", self.path, len(self._by_hash))


def _stamp_or_error(path: Path) -> tuple[int, int]:
    try:
        return _stamp(path)
    except OSError as exc:
        raise ValueError(f"API keys file {path}: cannot read it: {exc.strerror or exc}") from None


def _index(entries: Iterable[KeyEntry]) -> dict[str, KeyEntry]:
    return {entry.sha256: entry for entry in entries}
