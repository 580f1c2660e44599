"""Enrolment: a node with a join token gets a short-lived certificate, and renews it.

On the master that holds the fleet CA (``--ca-dir``), :class:`CaEnroller` redeems the token and
signs the CSR; a master without it forwards to the cloud master's (:class:`ForwardingEnroller`).
The CA decides the identity from the token (service, region) and the id asked for; it ignores
whatever names the CSR asks for. An identity enrols once: afterwards it renews with its current
certificate, so a second token holder cannot take over an id that is already enrolled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fogline.adapters.tls.certs import CertificateError, FleetCA
from fogline.adapters.tls.material import write_private
from fogline.core.security.identity import Identity
from fogline.core.security.tokens import JoinTokens
from fogline.errors import InvalidInputError, PermissionDeniedError

log = logging.getLogger(__name__)

DEFAULT_ENROLLED_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class Issued:
    """A signed certificate and the CA that signed it (PEM)."""

    certificate: bytes
    ca: bytes


class Enroller(Protocol):
    """Signs certificates for nodes: new ones with a join token, members renewing theirs."""

    async def enrol(self, token: str, identity: Identity, csr: bytes) -> Issued:
        """A certificate for ``identity`` if ``token`` allows it."""

    async def renew(self, identity: Identity, csr: bytes) -> Issued:
        """A fresh certificate for ``identity``, already authenticated by its current one."""


class CaEnroller:
    """Enrols with the fleet CA in ``ca_dir`` (its join tokens in ``ca_dir/tokens``); issued
    certificates live ``ttl_s``; enrolled identities are recorded in ``ca_dir/enrolled.json``."""

    def __init__(self, ca_dir: Path, *, ttl_s: float = DEFAULT_ENROLLED_TTL_S) -> None:
        self.ca = FleetCA.load(Path(ca_dir))
        self.tokens = JoinTokens(self.ca.tokens_dir)
        self.ttl_s = ttl_s
        self._record = Path(ca_dir) / "enrolled.json"

    def _enrolled(self) -> set[str]:
        try:
            return set(json.loads(self._record.read_text()))
        except (OSError, ValueError):
            return set()

    def _sign(self, identity: Identity, csr: bytes) -> Issued:
        try:
            cert = self.ca.sign_csr(csr, identity, ttl_s=self.ttl_s)
        except CertificateError as exc:
            raise InvalidInputError(f"certificate signing request refused: {exc}") from None
        return Issued(cert, self.ca.cert_pem)

    async def enrol(self, token: str, identity: Identity, csr: bytes) -> Issued:
        """Redeem ``token`` for ``identity`` and sign; PermissionDeniedError for an enrolled identity."""
        enrolled = self._enrolled()
        if identity.uri in enrolled:
            raise PermissionDeniedError(f"{identity.uri} is enrolled already: it renews with its certificate; "
                                        "a new node needs an id of its own")
        self._sign(identity, csr)  # NOTE: a bad CSR must not spend a use of the token
        self.tokens.redeem(token, service=identity.service, region=identity.region)
        issued = self._sign(identity, csr)
        write_private(self._record, json.dumps(sorted(enrolled | {identity.uri})).encode())
        log.info("enrolled %s with a join token", identity.uri)
        return issued

    async def renew(self, identity: Identity, csr: bytes) -> Issued:
        """Sign a fresh certificate for an authenticated member."""
        issued = self._sign(identity, csr)
        log.info("renewed the certificate of %s", identity.uri)
        return issued


class EnrolClient(Protocol):
    """The cloud master's control plane as an edge master forwards to it."""

    async def enrol(self, token: str, identity: Identity, csr: bytes) -> Issued: ...

    async def renew(self, csr: bytes, on_behalf_of: Identity | None = None) -> Issued: ...


class ForwardingEnroller:
    """An edge master without the CA: enrolments and renewals of its region's devices go to the cloud
    master, which checks that this edge may forward them (its own region only)."""

    def __init__(self, upstream: EnrolClient) -> None:
        self.upstream = upstream

    async def enrol(self, token: str, identity: Identity, csr: bytes) -> Issued:
        return await self.upstream.enrol(token, identity, csr)

    async def renew(self, identity: Identity, csr: bytes) -> Issued:
        return await self.upstream.renew(csr, on_behalf_of=identity)
