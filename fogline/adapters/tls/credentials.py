"""grpc credentials from :class:`~fogline.adapters.tls.material.TlsMaterial`, and the identity of a peer.

Servers use grpc's dynamic SSL credentials: each handshake asks whether the files changed, so a
rotated certificate serves new connections without a restart. A channel takes the credentials of
the moment it is opened; owners of long-lived channels open fresh ones when the material changes.
A channel to a member checks that the server's certificate is that member's
(``grpc.ssl_target_name_override`` = its :attr:`~fogline.core.security.identity.Identity.dns_name`).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from fogline.adapters.tls.material import ClientAuth, TlsMaterial
from fogline.core.security.identity import Identity, IdentityError

ChannelOptions = Sequence[tuple[str, int | str]]


def server_credentials(material: TlsMaterial, client_auth: ClientAuth) -> grpc.ServerCredentials:
    """Credentials that serve the material's current certificate to each new connection and, with
    ``REQUIRE``, refuse in the handshake a client without a certificate the CA signed."""
    require = client_auth is ClientAuth.REQUIRE

    def configuration() -> grpc.ServerCertificateConfiguration:
        pem = material.pem
        return grpc.ssl_server_certificate_configuration([(pem.key, pem.cert)], pem.ca if require else None)

    served = [material.generation]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # NOTE: called by grpc on every handshake, from its own thread: only compare a counter here.
        if material.generation == served[0]:
            return None
        served[0] = material.generation
        return configuration()

    return grpc.dynamic_ssl_server_credentials(configuration(), fetch, require_client_authentication=require)


def channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    """Client credentials: trust the fleet CA, present this process's certificate."""
    pem = material.pem
    return grpc.ssl_channel_credentials(root_certificates=pem.ca, private_key=pem.key, certificate_chain=pem.cert)


def open_channel(address: str, material: TlsMaterial | None, *, options: ChannelOptions = (),
                 peer: Identity | None = None, server_name: str | None = None) -> grpc.aio.Channel:
    """A channel to ``address``: plaintext without material, else mTLS with the current certificate,
    checking that the server is ``peer`` (its certificate names ``peer.dns_name``), or carries
    ``server_name``, when one is given; otherwise that it carries the host of ``address``."""
    if material is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    opts = list(options)
    name = peer.dns_name if peer is not None else server_name
    if name is not None:
        opts.append(("grpc.ssl_target_name_override", name))
    return grpc.aio.secure_channel(address, channel_credentials(material), options=opts)


def server_tls_channel(address: str, ca: bytes, *, options: ChannelOptions = (),
                       server_name: str | None = None) -> grpc.aio.Channel:
    """A channel that checks the server against the CA ``ca`` but presents no certificate (enrolment,
    before this process has one)."""
    opts = list(options)
    if server_name is not None:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca), options=opts)


def peer_identity(context: grpc.aio.ServicerContext) -> Identity | None:
    """The identity in the client certificate of this call; None without one (or not a Fogline one)."""
    values = context.auth_context().get("peer_spiffe_id")
    if not values:
        return None
    try:
        return Identity.parse(values[0].decode())
    except (IdentityError, UnicodeDecodeError):
        return None
