"""The TLS of one running process, set up the same way by every tier.

:func:`prepare` reads the process's certificate (enrolling first with a join token when there is
none yet), checks that it names this process, and returns a :class:`ProcessSecurity` that keeps the
files watched (a rotated certificate serves new connections at once) and renews the certificate
through the parent master before it expires::

    security = await prepare(settings, identity, parent_server_name)
    channel = open_channel(address, security.material, peer=member_identity)
    security.start(renew_with=control_client)    # control_client.renew(csr) -> Issued
    ...
    await security.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import Protocol

from fogline.adapters.grpc.control import enrol_at
from fogline.adapters.tls.certs import CLOCK_SKEW, identity_of, make_csr, not_after, not_before
from fogline.adapters.tls.enrolment import Issued
from fogline.adapters.tls.material import TlsMaterial, TlsSettings, write_private
from fogline.core.control.backoff import Backoff
from fogline.core.security.identity import REGIONAL, Identity, IdentityError
from fogline.errors import FoglineError
from fogline.servers.settings import ProcessSettings

log = logging.getLogger(__name__)

RENEW_AT_FRACTION = 2 / 3
"""A certificate is renewed once this share of its lifetime has passed."""
MIN_RENEW_INTERVAL_S = 1.0
"""The least time between two renewals, whatever a certificate's lifetime: no certificate can make a hot loop."""


class SecurityError(RuntimeError):
    """The process cannot start securely: missing files, a certificate of another identity, a
    failed enrolment. The message says what to fix."""


class Renewer(Protocol):
    """Where a certificate is renewed: the parent master's control plane."""

    async def renew(self, csr: bytes) -> Issued: ...


def member_identity(service: str, member_id: str, region: str) -> Identity | None:
    """The identity a member's certificate must carry (None for names no certificate can hold)."""
    try:
        return Identity(service=service, id=member_id, region=region if service in REGIONAL else "")
    except IdentityError:
        return None


async def prepare(settings: ProcessSettings, identity: Identity, *,
                  parent_server_name: str | None = None) -> ProcessSecurity | None:
    """The process's TLS (None: plaintext); enrols first when the certificate is missing and a join
    token is given. SecurityError when it cannot start securely."""
    tls = settings.tls
    if tls is None:
        return None
    files = tls.files
    if (not files.cert.is_file() or not files.key.is_file()) and settings.join_token:
        await _enrol(settings, tls, identity, parent_server_name)
    missing = files.missing()
    if missing:
        hint = "" if settings.join_token else " (or give a join token and the enrolment address to get one)"
        raise SecurityError(f"TLS file not found: {', '.join(map(str, missing))}{hint}")
    try:
        material = TlsMaterial(files)
    except ValueError as exc:
        raise SecurityError(str(exc)) from None
    named = identity_of(material.pem.cert)
    if named != identity:
        raise SecurityError(f"the certificate {files.cert} names {named.uri}, but this process is {identity.uri}: "
                            "start it with the id and region its certificate names, or issue one for it")
    return ProcessSecurity(material, identity, tls)


async def _enrol(settings: ProcessSettings, tls: TlsSettings, identity: Identity, server_name: str | None) -> None:
    if not settings.enrol:
        raise SecurityError("a join token needs the enrolment address of a master (--enrol host:port)")
    if not tls.files.ca.is_file():
        raise SecurityError(f"enrolling needs the fleet CA certificate to check the master: {tls.files.ca} not found")
    csr, key = make_csr(identity)
    try:
        issued = await enrol_at(settings.enrol, tls.files.ca.read_bytes(), settings.join_token or "", identity,
                                csr, server_name=server_name)
    except FoglineError as exc:
        raise SecurityError(f"enrolment at {settings.enrol} failed: {exc.code.value}: {exc}") from None
    write_private(tls.files.key, key)
    write_private(tls.files.cert, issued.certificate, mode=0o644)
    log.info("enrolled as %s; certificate valid until %s", identity.uri, not_after(issued.certificate).isoformat())


class ProcessSecurity:
    """A process's certificate material, watched for changes and renewed before it expires."""

    def __init__(self, material: TlsMaterial, identity: Identity, settings: TlsSettings) -> None:
        self.material = material
        self.identity = identity
        self.settings = settings
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, renew_with: Renewer | None = None) -> None:
        """Watch the files; with ``renew_with``, also renew the certificate there before it expires."""
        self._tasks.append(asyncio.create_task(self.material.watch(), name="tls-watch"))
        if renew_with is not None:
            self._tasks.append(asyncio.create_task(self._renew_loop(renew_with), name="tls-renew"))

    def renew_due_in_s(self) -> float:
        """Seconds until the current certificate should be renewed (≤ 0: now)."""
        cert = self.material.pem.cert
        # NOTE: the CA back-dates not_before by its clock-skew allowance; the lifetime counts from issue.
        end = not_after(cert).timestamp()
        start = min(not_before(cert).timestamp() + CLOCK_SKEW.total_seconds(), end)
        return start + (end - start) * RENEW_AT_FRACTION - time.time()

    async def renew_once(self, renewer: Renewer) -> None:
        """Get a fresh certificate (new key) and put it in place; the watch serves it."""
        csr, key = make_csr(self.identity)
        issued = await renewer.renew(csr)
        if identity_of(issued.certificate) != self.identity:
            raise SecurityError("the master returned a certificate for another identity")
        write_private(self.material.files.key, key)
        write_private(self.material.files.cert, issued.certificate, mode=0o644)
        self.material.poll()
        log.info("certificate renewed; valid until %s", not_after(issued.certificate).isoformat())

    async def _renew_loop(self, renewer: Renewer) -> None:
        backoff = Backoff(initial_s=0.5, max_s=30.0)
        while True:
            await asyncio.sleep(max(MIN_RENEW_INTERVAL_S, self.renew_due_in_s()))
            try:
                await self.renew_once(renewer)
                backoff.reset()
            except (FoglineError, SecurityError) as exc:
                expires = not_after(self.material.pem.cert)
                log.warning("certificate renewal failed (%s); retrying; it expires %s", exc,
                            _in(expires))
                await asyncio.sleep(backoff.next_delay())

    async def stop(self) -> None:
        """Stop watching and renewing."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


def _in(when: datetime) -> str:
    left_s = (when - datetime.now(timezone.utc)).total_seconds()
    return f"in {left_s:.0f}s" if left_s > 0 else "now (expired)"
