"""Join tokens: how a new node enrols without a hand-issued certificate.

An operator creates a token (``fogline certs token``) for a service, and for a device node or edge
master its region, valid for a while and for a number of uses. The new node presents it once to be
issued its certificate. Only the token's SHA-256 is ever stored: one JSON file per token, named
``<sha256 hex>.json``, in a directory only the owner can read::

    {"service": "device", "region": "eu-1", "expires_at": 1735000000.0, "uses_left": 1, "created_at": ...}

The token exists in clear only in the return value of :meth:`JoinTokens.create`; it is never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogline.core.security.identity import REGIONAL, check_name
from fogline.errors import PermissionDeniedError, UnauthenticatedError

log = logging.getLogger(__name__)

TOKEN_PREFIX = "fogline-jt-"
TOKEN_BYTES = 32
ENROLLING_SERVICES = frozenset({"device", "worker", "edge"})
"""The services a join token can enrol: processes of the fleet that join it, not the cloud master
(which runs next to the CA) nor people."""
ID_CHARS = 12
"""How many hex characters of a token's hash name it in listings."""

_SHAPE = re.compile(rf"^{re.escape(TOKEN_PREFIX)}[A-Za-z0-9_-]{{43}}$")
# NOTE: one message for every invalid token. Saying which of unknown, spent or expired it is would tell
# whoever holds a stolen or guessed token whether it was ever real and when; the bearer's remedy is
# the same for all three: ask for a new one.
INVALID_TOKEN = ("join token not valid: unknown, already used up, or expired; "
                 "ask the operator for a new one (fogline certs token)")


@dataclass(frozen=True)
class TokenGrant:
    """What a join token lets its bearer become: a ``service``, in ``region`` for a device or edge."""

    service: str
    region: str


def token_hash(token: str) -> str:
    """The SHA-256 hex of ``token``: the only form of it that is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token: str) -> str:
    """The short id that names ``token`` in listings and logs (not a secret: a prefix of its hash)."""
    return token_hash(token)[:ID_CHARS]


class JoinTokens:
    """The join tokens kept in one directory (by hash), created by an operator, redeemed by new nodes.

    NOTE: one process owns the directory (the CA's host). A lock serialises redemptions within it,
    so a token is never used more often than it allows by concurrent calls from threads."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._directory = Path(directory)
        self._clock = clock
        self._lock = threading.Lock()
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._directory, 0o700)

    @property
    def directory(self) -> Path:
        """Where the tokens' files are."""
        return self._directory

    def create(self, *, service: str, region: str = "", ttl_s: float, uses: int = 1) -> str:
        """A new token enrolling a ``service`` (in ``region`` for a device or edge) for ``ttl_s`` and
        ``uses`` redemptions; the only time the token exists in clear. ValueError for bad arguments."""
        _check_grant(service, region)
        _check_limits(ttl_s, uses)
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        now = self._clock()
        record = {"service": service, "region": region if service in REGIONAL else "",
                  "expires_at": now + ttl_s, "uses_left": uses, "created_at": now}
        _write_json(self._path(token_hash(token)), record)
        log.info("join token %s created: a %s in region %r, %d use(s), for %g s",
                 token_id(token), service, region, uses, ttl_s)
        return token

    def redeem(self, token: str, *, service: str, region: str) -> TokenGrant:
        """The grant of ``token`` for a ``service`` in ``region``, using it once.

        UnauthenticatedError if the token is malformed, unknown, spent or expired (one message for all);
        PermissionDeniedError, without using it, if it enrols another service or region. The region
        only counts for a device or edge: a worker's identity names none."""
        if not isinstance(token, str) or not _SHAPE.match(token):
            raise UnauthenticatedError(INVALID_TOKEN)
        digest = token_hash(token)
        with self._lock:
            record = self._live(digest)
            if record is None:
                raise UnauthenticatedError(INVALID_TOKEN)
            grant = TokenGrant(service=record["service"], region=record["region"])
            _check_match(grant, service, region)
            self._use(digest, record)
        log.info("join token %s redeemed by a %s in region %r", digest[:ID_CHARS], service, region)
        return grant

    def active(self) -> list[dict[str, Any]]:
        """The live tokens, without any secret: id, service, region, expires_at, uses_left, soonest
        to expire first. Expired ones are deleted."""
        out = []
        with self._lock:
            for path in sorted(self._directory.glob("*.json")):
                record = self._live(path.stem)
                if record is not None:
                    out.append({"id": path.stem[:ID_CHARS], "service": record["service"],
                                "region": record["region"], "expires_at": record["expires_at"],
                                "uses_left": record["uses_left"]})
        return sorted(out, key=lambda t: t["expires_at"])

    # NOTE: the lookup by hash is the comparison, and it leaks nothing worth timing. The file name is
    # the SHA-256 of what the caller presented: how long finding it takes depends on that digest, which
    # the caller cannot steer towards a stored one without inverting SHA-256. Nothing secret is ever
    # compared byte by byte, so there is no hmac.compare_digest to make.
    def _path(self, digest: str) -> Path:
        return self._directory / f"{digest}.json"

    def _live(self, digest: str) -> dict[str, Any] | None:
        """The record of a token that can still be used; None (deleting its file if expired or spent) if none."""
        path = self._path(digest)
        record = _read_json(path)
        if record is None:
            return None
        if record["expires_at"] <= self._clock() or record["uses_left"] < 1:
            path.unlink(missing_ok=True)
            return None
        return record

    def _use(self, digest: str, record: dict[str, Any]) -> None:
        """Count one use of the token: rewrite its file, or delete it after the last use."""
        uses_left = record["uses_left"] - 1
        if uses_left < 1:
            self._path(digest).unlink(missing_ok=True)
        else:
            _write_json(self._path(digest), {**record, "uses_left": uses_left})


def _check_grant(service: str, region: str) -> None:
    """ValueError unless a token can enrol a ``service`` in ``region``."""
    if service not in ENROLLING_SERVICES:
        raise ValueError(f"a join token enrols one of {sorted(ENROLLING_SERVICES)}, not {service[:40]!r}")
    if service in REGIONAL:
        if not region:
            raise ValueError(f"a join token for a {service} needs its region")
        check_name("region", region)
    elif region:
        raise ValueError(f"a {service} belongs to no region: give a join token for it none")


def _check_limits(ttl_s: float, uses: int) -> None:
    """ValueError unless ``ttl_s`` is a positive, finite duration and ``uses`` at least 1."""
    if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"a join token's ttl must be a positive number of seconds, not {ttl_s!r}")
    if isinstance(uses, bool) or not isinstance(uses, int) or uses < 1:
        raise ValueError(f"a join token allows at least 1 use, not {uses!r}")


def _check_match(grant: TokenGrant, service: str, region: str) -> None:
    """PermissionDeniedError unless ``grant`` lets its bearer become a ``service`` in ``region``."""
    wrong_region = service in REGIONAL and grant.region != region
    if grant.service != service or wrong_region:
        raise PermissionDeniedError(f"this join token enrols a {grant.service} in region {grant.region!r}, "
                                    f"not a {service[:40]} in region {region[:80]!r}")


def _read_json(path: Path) -> dict[str, Any] | None:
    """A token's record; None if there is no such file, or it is not one (logged by the file's name)."""
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("join token file %s cannot be read (%s); ignoring it", path.name, exc)
        return None
    if not _is_record(record):
        log.warning("join token file %s is not a token record; ignoring it", path.name)
        return None
    return record


def _is_record(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("service"), str)
            and isinstance(record.get("region"), str) and isinstance(record.get("expires_at"), int | float)
            and isinstance(record.get("uses_left"), int))


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically, readable by the owner only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
