"""The fleet certificate authority, and the certificates it issues to members, operators and clients.

A :class:`FleetCA` lives in a directory::

    ca.pem    0644  the CA certificate every process trusts (TlsFiles.ca)
    ca.key    0600  its private key: whoever reads it can become any member
    tokens/   0700  join tokens (:mod:`fogline.core.security.tokens`), stored by hash only

Every leaf it signs names exactly one identity (:class:`~fogline.core.security.identity.Identity`):
its SPIFFE ID as the URI SAN, which masters read off the peer certificate, and its DNS name, which a
connection *to* a member checks. Leaves are for both ends of a connection (serverAuth + clientAuth):
every Fogline process serves and calls. Keys are EC P-256; a CSR may bring P-256/P-384 or RSA ≥ 2048.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fogline.adapters.tls.material import TlsFiles, write_private
from fogline.core.security.identity import Identity, IdentityError
from fogline.core.security.ledger import IdentityLedger

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
TOKENS = "tokens"
LEDGER = "identities.json"
CA_NAME = "Fogline fleet CA"
CA_VALIDITY = dt.timedelta(days=3652)
CLOCK_SKEW = dt.timedelta(seconds=60)
"""Leaves are valid from this long before they are issued: a peer whose clock is a little behind
must not reject a certificate fresh from the CA."""
CN_MAX_CHARS = 64
"""The longest common name X.509 allows (ub-common-name)."""
EC_CURVES = frozenset({"secp256r1", "secp384r1"})
RSA_MIN_BITS = 2048

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


class CertificateError(ValueError):
    """A PEM that is not a certificate or CSR, a CSR whose signature does not verify, a key type this
    fleet does not accept, or a certificate that does not name a Fogline identity or chain to the CA."""


class FleetCA:
    """The fleet's certificate authority: its certificate and key, read from (or created in) a directory."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._directory = Path(directory)
        self._cert = cert
        self._key = key

    @classmethod
    def init(cls, directory: Path) -> FleetCA:
        """A new self-signed CA written to ``directory``; FileExistsError if one is there already."""
        directory = Path(directory)
        _refuse_existing(directory)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _ca_certificate(key)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            write_private(directory / CA_KEY, _key_pem(key), 0o600, exclusive=True)
        except FileExistsError:
            raise FileExistsError(_exists_message(directory, CA_KEY)) from None
        write_private(directory / CA_CERT, _cert_pem(cert), 0o644)
        _private_dir(directory / TOKENS)
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path) -> FleetCA:
        """The CA in ``directory``; FileNotFoundError naming what is missing, CertificateError if unusable."""
        directory = Path(directory)
        missing = [name for name in (CA_CERT, CA_KEY) if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"no fleet CA in {directory}: {', '.join(missing)} not found; "
                                    f"create one with `fogline certs init {directory}`")
        cert = _certificate((directory / CA_CERT).read_bytes(), str(directory / CA_CERT))
        key = _ca_key((directory / CA_KEY).read_bytes(), directory / CA_KEY)
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise CertificateError(f"{directory / CA_KEY} is not the key of {directory / CA_CERT}")
        return cls(directory, cert, key)

    @property
    def directory(self) -> Path:
        """Where the CA's files are."""
        return self._directory

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM: what every process trusts."""
        return _cert_pem(self._cert)

    @property
    def tokens_dir(self) -> Path:
        """Where this CA's join tokens are kept (by hash)."""
        return self._directory / TOKENS

    @property
    def ledger(self) -> IdentityLedger:
        """The identities this CA has issued certificates to, and those it revoked."""
        return IdentityLedger(self._directory / LEDGER)

    def issue(self, identity: Identity, *, ttl_s: float, hosts: Sequence[str] = (),
              public_key: PublicKey | None = None) -> tuple[bytes, bytes | None]:
        """A leaf certificate for ``identity`` valid ``ttl_s``, also naming ``hosts`` (IP literals or DNS
        names): (cert PEM, key PEM in PKCS8), or (cert PEM, None) for a ``public_key`` brought along."""
        if public_key is not None:
            cert = self._leaf(_check_public_key(public_key), identity, ttl_s, hosts)
            self.ledger.record(identity.uri)
            return cert, None
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(key.public_key(), identity, ttl_s, hosts)
        self.ledger.record(identity.uri)
        return cert, _key_pem(key)

    def sign_csr(self, csr_pem: bytes, identity: Identity, *, ttl_s: float) -> bytes:
        """A leaf certificate for ``identity`` and the CSR's key; CertificateError for a CSR that does
        not parse, whose signature does not verify, or whose key this fleet does not accept."""
        csr = _csr(csr_pem)
        # NOTE: only the CSR's key is used. The names, extensions and subject it asks for are ignored:
        # the CA decides who the requester is (from its join token or its current certificate).
        return self._leaf(_csr_public_key(csr), identity, ttl_s, ())

    def _leaf(self, public_key: PublicKey, identity: Identity, ttl_s: float, hosts: Sequence[str]) -> bytes:
        """Sign a leaf for ``public_key`` naming ``identity`` and ``hosts``."""
        now = _now()
        not_after = now + _ttl(ttl_s)
        if not_after > self._cert.not_valid_after_utc:
            raise ValueError(f"a certificate valid {ttl_s:g} s would outlive the fleet CA "
                             f"(it expires {self._cert.not_valid_after_utc:%Y-%m-%d}); choose a shorter ttl")
        builder = (x509.CertificateBuilder()
                   .subject_name(_common_name(identity.dns_name[:CN_MAX_CHARS]))
                   .issuer_name(self._cert.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after))
        for extension, critical in _leaf_extensions(identity, hosts, public_key, self._cert):
            builder = builder.add_extension(extension, critical=critical)
        return _cert_pem(builder.sign(self._key, hashes.SHA256()))


def make_csr(identity: Identity) -> tuple[bytes, bytes]:
    """A new P-256 key and a CSR naming ``identity``: (CSR PEM, key PEM in PKCS8)."""
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(_subject_names(identity, ()))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(_common_name(identity.dns_name[:CN_MAX_CHARS]))
           .add_extension(san, critical=False).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def identity_of(cert_pem: bytes) -> Identity:
    """The identity a certificate names in its URI SAN; CertificateError if it names none, or several."""
    cert = _certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError(f"certificate {_subject(cert)} has no subject alternative names") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise CertificateError(f"certificate {_subject(cert)} names {len(uris)} spiffe:// identities, not one")
    try:
        return Identity.parse(uris[0])
    except IdentityError as err:
        raise CertificateError(f"certificate {_subject(cert)} does not name a Fogline identity: {err}") from None


def not_after(cert_pem: bytes) -> dt.datetime:
    """When the certificate expires (aware, UTC)."""
    return _certificate(cert_pem).not_valid_after_utc


def not_before(cert_pem: bytes) -> dt.datetime:
    """When the certificate starts to be valid (aware, UTC)."""
    return _certificate(cert_pem).not_valid_before_utc


def serial_of(cert_pem: bytes) -> int:
    """The certificate's serial number."""
    return _certificate(cert_pem).serial_number


def write_identity(out_dir: Path, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> TlsFiles:
    """Write ``cert.pem`` (0644), ``key.pem`` (0600) and ``ca.pem`` (0644) to ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    files = TlsFiles(out_dir / "cert.pem", out_dir / "key.pem", out_dir / "ca.pem")
    # NOTE: a reloading reader (TlsMaterial.poll) ignores a certificate and key that do not match yet
    # and retries, so the order does not matter for it; the key goes first all the same.
    write_private(files.key, key_pem, 0o600)
    write_private(files.cert, cert_pem, 0o644)
    write_private(files.ca, ca_pem, 0o644)
    return files


def verify_chain(cert_pem: bytes, ca_pem: bytes, *, at: dt.datetime | None = None) -> None:
    """CertificateError unless the CA signed the certificate and both are valid ``at`` (default now)."""
    cert, ca = _certificate(cert_pem), _certificate(ca_pem, "CA certificate")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(f"certificate {_subject(cert)} was not issued by the CA {_subject(ca)}") from None
    moment = at or _now()
    _check_validity(cert, moment)
    _check_validity(ca, moment)


# --- Building --------------------------------------------------------------------------------------


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """The self-signed CA certificate: signs leaves only (path length 0), for ten years."""
    now, name = _now(), _common_name(CA_NAME)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return builder.sign(key, hashes.SHA256())


def _leaf_extensions(identity: Identity, hosts: Sequence[str], public_key: PublicKey,
                     ca: x509.Certificate) -> list[tuple[x509.ExtensionType, bool]]:
    """The extensions of a leaf, each with whether it is critical."""
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    return [
        (x509.SubjectAlternativeName(_subject_names(identity, hosts)), False),
        (usage, False),
        (_key_usage(digital_signature=True), True),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_authority_key_id(ca), False),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
    ]


def _authority_key_id(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The CA's key identifier, as its own SubjectKeyIdentifier says (or computed from its key)."""
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_check_public_key(ca.public_key()))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _subject_names(identity: Identity, hosts: Sequence[str]) -> list[x509.GeneralName]:
    """The identity's URI and DNS names (its own and its group's), then each host not named yet."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri),
                                     *(x509.DNSName(name) for name in identity.dns_names)]
    for host in hosts:
        name = _host_name(host)
        if name not in names:
            names.append(name)
    return names


def _host_name(host: str) -> x509.GeneralName:
    """An IP address literal as an IPAddress, a DNS name as a DNSName; CertificateError otherwise."""
    host = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not _DNS_NAME.match(host):
        raise CertificateError(f"host {host[:80]!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.lower())


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False,
               crl_sign: bool = False) -> x509.KeyUsage:
    """A KeyUsage with only the named bits set."""
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
                         crl_sign=crl_sign, encipher_only=False, decipher_only=False)


def _common_name(cn: str) -> x509.Name:
    """A subject or issuer name of one CN."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ttl(ttl_s: float) -> dt.timedelta:
    """``ttl_s`` as a timedelta; ValueError unless it is a positive, finite number of seconds."""
    if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")
    return dt.timedelta(seconds=ttl_s)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --- Reading ---------------------------------------------------------------------------------------


def _certificate(pem: bytes, what: str = "certificate") -> x509.Certificate:
    """The certificate in ``pem``; CertificateError if it is not one."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError):
        raise CertificateError(f"{what} is not a PEM X.509 certificate") from None


def _csr(pem: bytes) -> x509.CertificateSigningRequest:
    """The CSR in ``pem``, its signature verified; CertificateError otherwise."""
    try:
        csr = x509.load_pem_x509_csr(pem)
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError("not a PEM certificate signing request (or one of an unsupported kind)") from None
    if not valid:
        raise CertificateError("the certificate signing request's signature does not verify")
    return csr


def _csr_public_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    """The CSR's key, if this fleet accepts its kind."""
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError("the certificate signing request's key is of an unsupported kind") from None
    return _check_public_key(key)


def _check_public_key(key: object) -> PublicKey:
    """``key`` if it is EC P-256/P-384 or RSA of at least 2048 bits; CertificateError otherwise."""
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_CURVES:
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= RSA_MIN_BITS:
        return key
    raise CertificateError(f"unsupported key ({_describe_key(key)}): use EC P-256 or P-384, "
                           f"or RSA of at least {RSA_MIN_BITS} bits")


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    return type(key).__name__


def _ca_key(pem: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    """The CA's private key from ``pem``; CertificateError (naming the file, never its content) otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path} is not an EC private key")
    return key


def _check_validity(cert: x509.Certificate, at: dt.datetime) -> None:
    """CertificateError unless ``cert`` is valid at ``at``."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= at <= end:
        raise CertificateError(f"certificate {_subject(cert)} is not valid at {at:%Y-%m-%dT%H:%M:%SZ}: "
                               f"valid from {start:%Y-%m-%dT%H:%M:%SZ} to {end:%Y-%m-%dT%H:%M:%SZ}")


def _subject(cert: x509.Certificate) -> str:
    return repr(cert.subject.rfc4514_string()[:100])


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    """A public key's DER SubjectPublicKeyInfo, to compare keys."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- Writing ---------------------------------------------------------------------------------------


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _refuse_existing(directory: Path) -> None:
    """FileExistsError if ``directory`` holds a CA's certificate or key already."""
    for name in (CA_KEY, CA_CERT):
        if (directory / name).exists():
            raise FileExistsError(_exists_message(directory, name))


def _exists_message(directory: Path, name: str) -> str:
    return (f"a fleet CA exists already in {directory} ({name} found); refusing to replace it, "
            f"which would orphan every certificate it issued; use it, or choose another directory")


def _private_dir(path: Path) -> None:
    """Create ``path`` (if needed), readable by the owner only."""
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
