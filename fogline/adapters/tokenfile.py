"""The admin credential: a secret token kept in a file, re-read when the file changes and compared
in constant time, or an admin certificate (:class:`AdminGate`). Shared by the admin REST API and the
nodes' gRPC repository calls; imports neither aiohttp nor grpc."""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fogline.core.security.identity import Identity
from fogline.errors import PermissionDeniedError, UnauthenticatedError

log = logging.getLogger(__name__)


class TokenFile:
    """The token in ``path``, re-read when the file's mtime or size changes. ValueError at start if the
    file is missing, unreadable or empty; afterwards such a file refuses every token (logged once)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._token: bytes | None = None
        if self.read() is None:
            raise ValueError(f"admin token file {self.path} is missing, unreadable or empty; "
                             "write a long random token into it")

    def read(self) -> bytes | None:
        """The current token; None (refuse every token) while the file is missing, unreadable or empty."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._forget(f"cannot be read ({exc.strerror or exc})")
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            self._token = self._load(st.st_mode)
        return self._token

    def matches(self, presented: bytes) -> bool:
        """Whether ``presented`` is the token (compared in constant time)."""
        token = self.read()
        return token is not None and hmac.compare_digest(presented, token)

    def _load(self, mode: int) -> bytes | None:
        try:
            token = self.path.read_bytes().strip()
        except OSError as exc:
            log.error("admin token file %s cannot be read (%s); refusing admin tokens", self.path,
                      exc.strerror or exc)
            return None
        if not token:
            log.error("admin token file %s is empty; refusing admin tokens", self.path)
            return None
        if mode & 0o077:
            log.warning("admin token file %s is readable by other users; chmod 600 it", self.path)
        return token

    def _forget(self, why: str) -> None:
        if self._stamp is not None:  # NOTE: said once, not on every request while the file is gone
            log.error("admin token file %s %s; refusing admin tokens", self.path, why)
        self._stamp, self._token = None, None


ADMIN_SERVICE = "admin"


@dataclass(frozen=True)
class AdminWording:
    """What an admin surface (the REST admin API, a node's repository calls) tells a refused caller."""

    disabled: str
    """Neither a token file nor certificates are configured: nobody is admitted."""
    missing: str
    """The call carried no credential."""
    no_tokens: str
    """A token was sent, but this surface takes none."""
    surface: str
    """How the surface names itself in "…takes admin certificates or the admin token"."""


class AdminGate:
    """The one rule of who is an admin: a client certificate naming ``spiffe://fogline/admin/<id>``
    (where the transport shows certificates), or the token in ``tokens``. Raises
    UnauthenticatedError (no credential, a wrong token) or PermissionDeniedError (disabled, a
    certificate that is not an admin's)."""

    def __init__(self, tokens: TokenFile | None, *, certificates: bool, wording: AdminWording) -> None:
        self.tokens = tokens
        self.certificates = certificates
        self.wording = wording

    @property
    def enabled(self) -> bool:
        """Whether any credential can be admitted."""
        return self.tokens is not None or self.certificates

    def admit(self, identity: Identity | None, presented: bytes | None) -> str:
        """Who the caller is (``token`` or the certificate's identity), for the log."""
        w = self.wording
        if not self.enabled:
            raise PermissionDeniedError(w.disabled)
        if identity is not None and identity.service == ADMIN_SERVICE:
            return identity.uri
        if presented is not None:
            if self.tokens is None:
                raise UnauthenticatedError(w.no_tokens)
            if not self.tokens.matches(presented):
                raise UnauthenticatedError("admin token not valid")
            return "token"
        if identity is not None:
            raise PermissionDeniedError(f"certificate {identity.uri} is not an admin's: {w.surface} takes "
                                        f"spiffe://fogline/{ADMIN_SERVICE}/<id> certificates or the admin token")
        raise UnauthenticatedError(w.missing)
