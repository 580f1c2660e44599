"""Enrolment: a node with a join token gets a short-lived certificate, and renews it.

On the master that holds the fleet CA (``--ca-dir``), :class:`CaEnroller` redeems the token and
signs the CSR; a master without it forwards to the cloud master's (:class:`ForwardingEnroller`).
The CA decides the identity from the token (service, region) and the id asked for; it ignores
whatever names the CSR asks for. An identity enrols once, and only if the CA never issued it a
certificate (by hand or by enrolment, see :class:`~fogline.core.security.ledger.IdentityLedger`):
afterwards it renews with its current certificate, so a token holder cannot take over an existing
id. Only fleet members renew (an admin or client certificate expires as issued), and never a
revoked identity (``fogline certs revoke``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fogline.adapters.tls.certs import CertificateError, FleetCA
from fogline.core.security.identity import Identity
from fogline.core.security.ledger import IdentityLedger
from fogline.core.security.tokens import JoinTokens
from fogline.errors import InvalidInputError, PermissionDeniedError, UnavailableError

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
    """Enrols with the fleet CA in ``ca_dir`` (its join tokens in ``ca_dir/tokens``, its ledger of
    identities beside it); the certificates it signs live ``ttl_s``."""

    def __init__(self, ca_dir: Path, *, ttl_s: float = DEFAULT_ENROLLED_TTL_S) -> None:
        self.ca = FleetCA.load(Path(ca_dir))
        self.tokens = JoinTokens(self.ca.tokens_dir)
        self.ttl_s = ttl_s

    def _sign(self, identity: Identity, csr: bytes) -> Issued:
        try:
            cert = self.ca.sign_csr(csr, identity, ttl_s=self.ttl_s)
        except CertificateError as exc:
            raise InvalidInputError(f"certificate signing request refused: {exc}") from None
        return Issued(cert, self.ca.cert_pem)

    async def enrol(self, token: str, identity: Identity, csr: bytes) -> Issued:
        """Redeem ``token`` for ``identity`` and sign; PermissionDeniedError for an identity the CA has
        issued a certificate to before, or revoked."""
        ledger = self._ledger()
        if ledger.issued(identity.uri) or ledger.revoked(identity.uri):
            raise PermissionDeniedError(f"{identity.uri} has had a certificate already: it renews with it; "
                                        "a new node needs an id of its own")
        self._sign(identity, csr)  # NOTE: a bad CSR must not spend a use of the token
        self.tokens.redeem(token, service=identity.service, region=identity.region)
        issued = self._sign(identity, csr)
        ledger.record(identity.uri)
        log.info("enrolled %s with a join token", identity.uri)
        return issued

    async def renew(self, identity: Identity, csr: bytes) -> Issued:
        """Sign a fresh certificate for an authenticated member; PermissionDeniedError for one that is
        not a fleet member (admin and client certificates expire as issued) or is revoked."""
        if not identity.is_member:
            raise PermissionDeniedError(f"{identity.uri} cannot renew: only fleet members do; issue a new one")
        ledger = self._ledger()
        if ledger.revoked(identity.uri):
            raise PermissionDeniedError(f"{identity.uri} is revoked: its certificate is not renewed")
        issued = self._sign(identity, csr)
        ledger.record(identity.uri)  # NOTE: one issued before the ledger existed is known from now on
        log.info("renewed the certificate of %s", identity.uri)
        return issued

    def _ledger(self) -> IdentityLedger:
        """The CA's ledger, checked readable: UnavailableError (the operator's to fix) if it is not."""
        ledger = self.ca.ledger
        try:
            ledger.revoked("")
        except ValueError as exc:
            raise UnavailableError(f"enrolment is unavailable: {exc}") from None
        return ledger


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
