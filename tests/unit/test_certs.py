"""The fleet CA: creating and loading it, the leaves it issues and signs, and a real mTLS handshake."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fogline.adapters.tls.certs import (
    CertificateError,
    FleetCA,
    identity_of,
    make_csr,
    not_after,
    not_before,
    serial_of,
    verify_chain,
    write_identity,
)
from fogline.adapters.tls.credentials import open_channel, peer_identity, server_credentials
from fogline.adapters.tls.material import ClientAuth, TlsFiles, TlsMaterial
from fogline.core.security.identity import Identity

EDGE = Identity(service="edge", region="eu-1", id="edge-a")
DEVICE = Identity(service="device", region="eu-1", id="dev-a")
DAY_S = 86400.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(cert_pem: bytes) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.init(tmp_path / "ca")


# --- The CA ----------------------------------------------------------------------------------------


def test_init_writes_the_ca_files_with_their_modes(ca: FleetCA) -> None:
    assert mode(ca.directory / "ca.pem") == 0o644
    assert mode(ca.directory / "ca.key") == 0o600
    assert mode(ca.tokens_dir) == 0o700
    assert ca.tokens_dir == ca.directory / "tokens"
    assert (ca.directory / "ca.pem").read_bytes() == ca.cert_pem
    assert not list(ca.directory.glob(".*")), "no temporary file is left behind"


def test_the_ca_certificate_signs_leaves_only(ca: FleetCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Fogline fleet CA"
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3650) <= validity <= dt.timedelta(days=3654)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_init_refuses_to_replace_a_ca(ca: FleetCA) -> None:
    key_before = (ca.directory / "ca.key").read_bytes()
    with pytest.raises(FileExistsError, match=r"a fleet CA exists already in .*ca\.key"):
        FleetCA.init(ca.directory)
    assert (ca.directory / "ca.key").read_bytes() == key_before


def test_load_reads_the_same_ca(ca: FleetCA) -> None:
    loaded = FleetCA.load(ca.directory)
    assert loaded.cert_pem == ca.cert_pem
    cert_pem, _ = loaded.issue(DEVICE, ttl_s=DAY_S)
    verify_chain(cert_pem, ca.cert_pem)


def test_load_says_what_is_missing(tmp_path: Path, ca: FleetCA) -> None:
    with pytest.raises(FileNotFoundError, match=r"no fleet CA in .*ca\.pem, ca\.key not found.*fogline certs init"):
        FleetCA.load(tmp_path / "nowhere")
    (ca.directory / "ca.key").unlink()
    with pytest.raises(FileNotFoundError, match=r"ca\.key not found"):
        FleetCA.load(ca.directory)


def test_load_refuses_a_key_of_another_ca(tmp_path: Path, ca: FleetCA) -> None:
    other = FleetCA.init(tmp_path / "other")
    (ca.directory / "ca.key").write_bytes((other.directory / "ca.key").read_bytes())
    with pytest.raises(CertificateError, match="is not the key of"):
        FleetCA.load(ca.directory)
    (ca.directory / "ca.key").write_bytes(b"garbage")
    with pytest.raises(CertificateError, match="not an unencrypted PEM private key") as caught:
        FleetCA.load(ca.directory)
    assert "garbage" not in str(caught.value)


# --- Leaves ----------------------------------------------------------------------------------------


def test_issue_names_the_identity_and_the_hosts(ca: FleetCA) -> None:
    cert_pem, key_pem = ca.issue(EDGE, ttl_s=DAY_S, hosts=["127.0.0.1", "::1", "Edge-A.example.com", EDGE.dns_name])
    names = sans(cert_pem)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [EDGE.uri]
    assert names.get_values_for_type(x509.DNSName) == [*EDGE.dns_names, "edge-a.example.com"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert key_pem is not None and b"BEGIN PRIVATE KEY" in key_pem  # PKCS8
    assert identity_of(cert_pem) == EDGE
    verify_chain(cert_pem, ca.cert_pem)


def test_a_leaf_is_for_both_ends_and_signs_nothing(ca: FleetCA) -> None:
    cert_pem, _ = ca.issue(DEVICE, ttl_s=DAY_S)
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ca_ski = x509.load_pem_x509_certificate(ca.cert_pem).extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.value.digest
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEVICE.dns_name


def test_validity_starts_a_minute_early_and_lasts_the_ttl(ca: FleetCA) -> None:
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    cert_pem, _ = ca.issue(DEVICE, ttl_s=3600)
    after = dt.datetime.now(dt.timezone.utc)
    assert before - dt.timedelta(seconds=61) <= not_before(cert_pem) <= after - dt.timedelta(seconds=59)
    assert before + dt.timedelta(seconds=3599) <= not_after(cert_pem) <= after + dt.timedelta(seconds=3600)
    assert not_after(cert_pem).tzinfo is not None


def test_serials_are_random(ca: FleetCA) -> None:
    serials = {serial_of(ca.issue(DEVICE, ttl_s=60)[0]) for _ in range(3)}
    assert len(serials) == 3 and all(s > 2**64 for s in serials)


def test_a_long_id_is_cut_to_a_64_character_common_name(ca: FleetCA) -> None:
    long = Identity(service="worker", id="w" * 63)
    cert = x509.load_pem_x509_certificate(ca.issue(long, ttl_s=60)[0])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == long.dns_name[:64]
    assert identity_of(cert.public_bytes(serialization.Encoding.PEM)) == long


def test_issue_for_a_public_key_returns_no_key(ca: FleetCA) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert_pem, key_pem = ca.issue(DEVICE, ttl_s=60, public_key=key.public_key())
    assert key_pem is None
    assert x509.load_pem_x509_certificate(cert_pem).public_key() == key.public_key()
    with pytest.raises(CertificateError, match="unsupported key"):
        ca.issue(DEVICE, ttl_s=60, public_key=ec.generate_private_key(ec.SECP256K1()).public_key())


def test_issue_refuses_bad_hosts_and_ttls(ca: FleetCA) -> None:
    for host in ("", "not a host", "bad_under.example", "-leading.example"):
        with pytest.raises(CertificateError, match="neither an IP address nor a DNS name"):
            ca.issue(DEVICE, ttl_s=60, hosts=[host])
    for ttl_s in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            ca.issue(DEVICE, ttl_s=ttl_s)
    with pytest.raises(ValueError, match="would outlive the fleet CA"):
        ca.issue(DEVICE, ttl_s=11 * 365 * DAY_S)


def test_write_identity_writes_the_three_files(tmp_path: Path, ca: FleetCA) -> None:
    cert_pem, key_pem = ca.issue(DEVICE, ttl_s=60)
    assert key_pem is not None
    files = write_identity(tmp_path / "out" / "dev-a", cert_pem, key_pem, ca.cert_pem)
    out = tmp_path / "out" / "dev-a"
    assert files == TlsFiles(out / "cert.pem", out / "key.pem", out / "ca.pem")
    assert (mode(files.cert), mode(files.key), mode(files.ca)) == (0o644, 0o600, 0o644)
    assert files.key.read_bytes() == key_pem and files.cert.read_bytes() == cert_pem
    assert TlsMaterial(files).pem.ca == ca.cert_pem  # the files load as a pair


def test_verify_chain_refuses_another_cas_leaf_and_an_expired_one(tmp_path: Path, ca: FleetCA) -> None:
    other = FleetCA.init(tmp_path / "other")
    foreign, _ = other.issue(DEVICE, ttl_s=60)
    with pytest.raises(CertificateError, match="was not issued by the CA"):
        verify_chain(foreign, ca.cert_pem)
    mine, _ = ca.issue(DEVICE, ttl_s=60)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=120)
    with pytest.raises(CertificateError, match="is not valid at"):
        verify_chain(mine, ca.cert_pem, at=later)
    with pytest.raises(CertificateError, match=r"not a PEM X\.509 certificate"):
        verify_chain(b"garbage", ca.cert_pem)


def test_identity_of_refuses_a_certificate_without_a_fogline_identity() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = dt.datetime.now(dt.timezone.utc)

    def self_signed(*names: x509.GeneralName) -> bytes:
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    with pytest.raises(CertificateError, match="no subject alternative names"):
        identity_of(self_signed())
    with pytest.raises(CertificateError, match="names 0 spiffe:// identities"):
        identity_of(self_signed(x509.DNSName("x.example")))
    with pytest.raises(CertificateError, match="does not name a Fogline identity"):
        identity_of(self_signed(x509.UniformResourceIdentifier("spiffe://other/edge/x")))
    with pytest.raises(CertificateError, match=r"not a PEM X\.509 certificate"):
        identity_of(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# --- CSRs ------------------------------------------------------------------------------------------


def greedy_csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str = "victim") -> x509.CertificateSigningRequest:
    """A CSR asking for more than it should get: other names, and to be a CA."""
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("evil.example"), x509.UniformResourceIdentifier("spiffe://fogline/cloud/evil")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def test_sign_csr_names_only_the_identity_the_ca_chose(ca: FleetCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr_pem = greedy_csr(key).public_bytes(serialization.Encoding.PEM)
    cert_pem = ca.sign_csr(csr_pem, DEVICE, ttl_s=DAY_S)
    names = sans(cert_pem)
    assert list(names) == [x509.UniformResourceIdentifier(DEVICE.uri), *map(x509.DNSName, DEVICE.dns_names)]
    assert b"evil" not in x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEVICE.dns_name
    assert cert.public_key() == key.public_key()
    assert identity_of(cert_pem) == DEVICE
    verify_chain(cert_pem, ca.cert_pem)


def test_make_csr_round_trips_through_sign_csr(ca: FleetCA) -> None:
    csr_pem, key_pem = make_csr(DEVICE)
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    requested = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert requested.get_values_for_type(x509.UniformResourceIdentifier) == [DEVICE.uri]
    cert_pem = ca.sign_csr(csr_pem, DEVICE, ttl_s=60)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert x509.load_pem_x509_certificate(cert_pem).public_key() == key.public_key()


def test_sign_csr_accepts_rsa_2048(ca: FleetCA) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert_pem = ca.sign_csr(greedy_csr(key).public_bytes(serialization.Encoding.PEM), DEVICE, ttl_s=60)
    verify_chain(cert_pem, ca.cert_pem)


def test_sign_csr_refuses_garbage(ca: FleetCA) -> None:
    for garbage in (b"", b"garbage", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                    ca.cert_pem):
        with pytest.raises(CertificateError, match="not a PEM certificate signing request"):
            ca.sign_csr(garbage, DEVICE, ttl_s=60)


def test_sign_csr_refuses_a_bad_signature(ca: FleetCA) -> None:
    der = greedy_csr(ec.generate_private_key(ec.SECP256R1())).public_bytes(serialization.Encoding.DER)
    tampered = x509.load_der_x509_csr(der.replace(b"victim", b"victin"))
    with pytest.raises(CertificateError, match="signature does not verify"):
        ca.sign_csr(tampered.public_bytes(serialization.Encoding.PEM), DEVICE, ttl_s=60)


def test_sign_csr_refuses_weak_or_unusual_keys(ca: FleetCA) -> None:
    for key in (rsa.generate_private_key(public_exponent=65537, key_size=1024), ec.generate_private_key(ec.SECP256K1())):
        csr_pem = greedy_csr(key).public_bytes(serialization.Encoding.PEM)
        with pytest.raises(CertificateError, match="unsupported key"):
            ca.sign_csr(csr_pem, DEVICE, ttl_s=60)


# --- A real handshake ------------------------------------------------------------------------------


async def test_a_real_mtls_handshake_checks_both_ends(tmp_path: Path, ca: FleetCA) -> None:
    server_cert, server_key = ca.issue(EDGE, ttl_s=DAY_S, hosts=["127.0.0.1"])
    client_cert, client_key = ca.issue(DEVICE, ttl_s=DAY_S)
    assert server_key is not None and client_key is not None
    server_files = write_identity(tmp_path / "edge", server_cert, server_key, ca.cert_pem)
    client = TlsMaterial(write_identity(tmp_path / "dev", client_cert, client_key, ca.cert_pem))

    seen: list[Identity | None] = []

    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(peer_identity(context))
        return request

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Who", {"Am": grpc.unary_unary_rpc_method_handler(whoami)})])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(TlsMaterial(server_files), ClientAuth.REQUIRE))
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        async with open_channel(address, client, peer=EDGE) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert await channel.unary_unary("/test.Who/Am")(b"hi", timeout=10) == b"hi"
        assert seen == [DEVICE], "the server reads the client's identity off its certificate"

        async with open_channel(address, client) as channel:  # no peer named: the IP SAN matches
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)

        impostor = Identity(service="edge", region="eu-1", id="edge-b")
        async with open_channel(address, client, peer=impostor) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        anonymous = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem)
        options = [("grpc.ssl_target_name_override", EDGE.dns_name)]
        async with grpc.aio.secure_channel(address, anonymous, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, "REQUIRE refuses a client without a certificate"
    finally:
        await server.stop(None)
