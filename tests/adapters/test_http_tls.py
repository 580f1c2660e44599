"""The REST status server over real TLS: HTTPS with the fleet CA, plain HTTP refused, a rotated certificate
served to new connections, client certificates read as Fogline identities.

:class:`TinyCA` (made with ``cryptography``) issues the certificates; the other TLS tests import it."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fogline.adapters.http import start_http
from fogline.adapters.http.status import DEFAULT_HEADER_TIMEOUT_S, serve_app
from fogline.adapters.metrics import Metrics
from fogline.adapters.tls.http import client_ssl_context, peer_identity_of, server_ssl_context
from fogline.adapters.tls.material import ClientAuth, TlsFiles, TlsMaterial, write_private
from fogline.core.security.identity import Identity
from tests.adapters.test_http_hygiene import Source

SERVER = Identity(service="edge", region="r", id="edge-r")
CLIENT = Identity(service="device", region="r", id="d1")


class TinyCA:
    """A throw-away CA for tests: P-256 keys, leaves naming one identity (URI SAN), its DNS name and 127.0.0.1."""

    def __init__(self, name: str = "test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(_usage(cert_sign=True), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, identity: Identity) -> tuple[bytes, bytes, int]:
        """(certificate PEM, key PEM, serial) of a new leaf for ``identity``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        serial = x509.random_serial_number()
        names = [x509.UniformResourceIdentifier(identity.uri), x509.DNSName(identity.dns_name),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.dns_name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(serial)
                .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_usage(), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem, serial

    def write(self, directory: Path, identity: Identity) -> tuple[TlsFiles, int]:
        """A new leaf for ``identity`` written to ``directory`` (over any there): its files and serial."""
        cert, key, serial = self.leaf(identity)
        files = TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")
        write_private(files.key, key)
        write_private(files.cert, cert, 0o644)
        write_private(files.ca, self.pem, 0o644)
        return files, serial

    def material(self, directory: Path, identity: Identity) -> TlsMaterial:
        """Material of a new leaf for ``identity`` in ``directory``."""
        return TlsMaterial(self.write(directory, identity)[0])


def _usage(*, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def ca_only_context(ca: TinyCA) -> ssl.SSLContext:
    """A client context that trusts ``ca`` and presents no certificate."""
    context = ssl.create_default_context(cadata=ca.pem.decode())
    return context


def peer_serial(port: int, context: ssl.SSLContext, server_name: str) -> int:
    """The serial of the certificate the server on ``port`` presents to a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def ca() -> TinyCA:
    return TinyCA()


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    return tmp_path / "server"


@pytest.fixture
def material(ca: TinyCA, server_dir: Path) -> TlsMaterial:
    return ca.material(server_dir, SERVER)


@pytest.fixture
async def https_port(material: TlsMaterial) -> AsyncIterator[int]:
    """A status server over HTTPS (client certificates optional) on 127.0.0.1, port 0."""
    runner, port = await start_http(Source(), Metrics("test"), "127.0.0.1", 0,
                                    tls=(material, ClientAuth.OPTIONAL))
    yield port
    await runner.cleanup()


async def test_healthz_answers_over_https_to_a_client_that_trusts_the_ca(https_port: int, ca: TinyCA) -> None:
    async with aiohttp.ClientSession() as http, \
            http.get(f"https://127.0.0.1:{https_port}/healthz", ssl=ca_only_context(ca)) as r:
        assert r.status == 200 and await r.json() == {"live": True}


async def test_a_member_client_context_checks_the_server_name(https_port: int, ca: TinyCA, tmp_path: Path) -> None:
    context = client_ssl_context(ca.material(tmp_path / "client", CLIENT))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://127.0.0.1:{https_port}/healthz", ssl=context,
                            server_hostname=SERVER.dns_name) as r:
            assert r.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"https://127.0.0.1:{https_port}/healthz", ssl=context,
                           server_hostname="someone-else.edge.fogline")


async def test_a_client_that_does_not_trust_the_ca_is_refused(https_port: int) -> None:
    other = TinyCA("another CA")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"https://127.0.0.1:{https_port}/healthz", ssl=ca_only_context(other))


async def test_plain_http_to_the_https_server_fails(https_port: int) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{https_port}/healthz") as r:
                await r.read()


async def test_a_rotated_certificate_is_served_to_new_connections(https_port: int, material: TlsMaterial,
                                                                   ca: TinyCA, server_dir: Path) -> None:
    context = ca_only_context(ca)
    before = await asyncio.to_thread(peer_serial, https_port, context, SERVER.dns_name)
    assert before == x509.load_pem_x509_certificate(material.pem.cert).serial_number
    _, serial = ca.write(server_dir, SERVER)
    assert material.poll()
    after = await asyncio.to_thread(peer_serial, https_port, context, SERVER.dns_name)
    assert after == serial != before
    async with aiohttp.ClientSession() as http, \
            http.get(f"https://127.0.0.1:{https_port}/healthz", ssl=context) as r:
        assert r.status == 200


async def test_a_half_written_rotation_keeps_the_current_certificate(https_port: int, material: TlsMaterial,
                                                                     ca: TinyCA, server_dir: Path) -> None:
    context = ca_only_context(ca)
    before = await asyncio.to_thread(peer_serial, https_port, context, SERVER.dns_name)
    cert, _, _ = ca.leaf(SERVER)
    write_private(material.files.cert, cert, 0o644)  # a new certificate, its key not written yet
    assert not material.poll()
    assert await asyncio.to_thread(peer_serial, https_port, context, SERVER.dns_name) == before


async def identity_route(request: web.Request) -> web.Response:
    identity = peer_identity_of(request)
    return web.json_response(None if identity is None else identity.uri)


@pytest.fixture
async def whoami(material: TlsMaterial, request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """An HTTPS app answering the identity of the client certificate (client auth: the test's param)."""
    app = web.Application()
    app.router.add_get("/whoami", identity_route)
    context = server_ssl_context(material, getattr(request, "param", ClientAuth.OPTIONAL))
    runner, port = await serve_app(app, "127.0.0.1", 0, flag="--test-port",
                                   header_timeout_s=DEFAULT_HEADER_TIMEOUT_S, ssl_context=context)
    yield port
    await runner.cleanup()


async def test_the_client_certificate_is_read_as_a_fogline_identity(whoami: int, ca: TinyCA,
                                                                   tmp_path: Path) -> None:
    member = client_ssl_context(ca.material(tmp_path / "client", CLIENT))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://127.0.0.1:{whoami}/whoami", ssl=member,
                            server_hostname=SERVER.dns_name) as r:
            assert await r.json() == CLIENT.uri
        async with http.get(f"https://127.0.0.1:{whoami}/whoami", ssl=ca_only_context(ca)) as r:
            assert await r.json() is None  # optional: no certificate, no identity


async def test_a_client_certificate_of_another_ca_is_refused_in_the_handshake(whoami: int, ca: TinyCA,
                                                                             tmp_path: Path) -> None:
    stranger = client_ssl_context(TinyCA("another CA").material(tmp_path / "stranger", CLIENT))
    stranger.load_verify_locations(cadata=ca.pem.decode())  # it trusts the server; the server does not trust it
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"https://127.0.0.1:{whoami}/whoami", ssl=stranger,
                                server_hostname=SERVER.dns_name) as r:
                await r.read()


@pytest.mark.parametrize("whoami", [ClientAuth.REQUIRE], indirect=True)
async def test_require_refuses_a_client_without_a_certificate(whoami: int, ca: TinyCA) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"https://127.0.0.1:{whoami}/whoami", ssl=ca_only_context(ca)) as r:
                await r.read()


async def test_a_client_context_presents_its_rotated_certificate(whoami: int, ca: TinyCA, tmp_path: Path) -> None:
    material = ca.material(tmp_path / "client", CLIENT)
    context = client_ssl_context(material)
    renamed = Identity(service="device", region="r", id="d2")
    ca.write(tmp_path / "client", renamed)
    assert material.poll()
    async with aiohttp.ClientSession() as http, \
            http.get(f"https://127.0.0.1:{whoami}/whoami", ssl=context, server_hostname=SERVER.dns_name) as r:
        assert await r.json() == renamed.uri
