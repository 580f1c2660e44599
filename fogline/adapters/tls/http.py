"""ssl contexts for the REST servers (status, admin) and their clients, and the identity of an HTTPS peer.

A context loads the certificate again each time :class:`~fogline.adapters.tls.material.TlsMaterial`
changes: connections opened after that get the new certificate, open ones keep the one they began with.
A client context checks the server's name: a Fogline certificate names
:attr:`~fogline.core.security.identity.Identity.dns_name`, so a client connecting by address sets the
server name to that (aiohttp: ``server_hostname=``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from fogline.adapters.tls.material import ClientAuth, TlsMaterial
from fogline.core.security.identity import Identity, IdentityError

log = logging.getLogger(__name__)

_VERIFY = {
    ClientAuth.NONE: ssl.CERT_NONE,
    ClientAuth.OPTIONAL: ssl.CERT_OPTIONAL,
    ClientAuth.REQUIRE: ssl.CERT_REQUIRED,
}


def server_ssl_context(material: TlsMaterial, client_auth: ClientAuth) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) serving the material's certificate, verifying client
    certificates against the fleet CA as ``client_auth`` says (OPTIONAL: asks, and verifies one offered)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = _VERIFY[client_auth]
    _load(context, material)
    material.on_change(lambda: _reload(context, material))
    return context


def client_ssl_context(material: TlsMaterial) -> ssl.SSLContext:
    """A client context (TLS 1.2 or later) trusting the fleet CA, checking the server's name and
    presenting the material's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context, material)
    material.on_change(lambda: _reload(context, material))
    return context


def _load(context: ssl.SSLContext, material: TlsMaterial) -> None:
    """The CA and the certificate of ``material`` into ``context``.

    NOTE: a CA loaded once stays trusted by this context: a new CA bundle adds to it (both trusted while a
    CA rotates); ending trust in an old CA takes a restart."""
    context.load_verify_locations(cadata=material.pem.ca.decode("ascii"))
    context.load_cert_chain(material.files.cert, material.files.key)


def _reload(context: ssl.SSLContext, material: TlsMaterial) -> None:
    try:
        _load(context, material)
    except (ssl.SSLError, OSError, ValueError) as exc:
        # NOTE: the files may change again between the material's check and this read: keep serving.
        log.warning("TLS files %s changed again while reloading (%s); keeping the current certificate",
                    material.files.cert, exc)


def peer_identity_of(request: web.Request) -> Identity | None:
    """The Fogline identity in the client certificate of an HTTPS request; None without a (verified)
    certificate, or with one that names no Fogline identity."""
    transport = request.transport
    if transport is None:
        return None
    return identity_in(transport.get_extra_info("peercert"))


def identity_in(peercert: dict[str, Any] | None) -> Identity | None:
    """The first Fogline identity among the URI SANs of a certificate as ``ssl.getpeercert()`` gives it."""
    if not peercert:
        return None
    for uri in _uris(peercert.get("subjectAltName", ())):
        try:
            return Identity.parse(uri)
        except IdentityError:
            continue
    return None


def _uris(entries: Iterable[tuple[str, str]]) -> list[str]:
    return [value for kind, value in entries if kind == "URI"]
