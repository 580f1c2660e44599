"""The settings every Fogline process has, master or model server: where it listens, what it
accepts, how long it drains, and whether it finds its peers through Consul."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from fogline.adapters.consul.discovery import ConsulDiscovery
from fogline.adapters.grpc.server import DEFAULT_MAX_MESSAGE_BYTES
from fogline.adapters.tls.material import TlsSettings
from fogline.core.security.apikeys import ApiKeys


@dataclass(kw_only=True)
class ProcessSettings:
    """What the masters and the model servers are all configured with."""

    host: str = "127.0.0.1"
    """Interface to listen on."""
    advertise_host: str | None = None
    """Address peers use to reach this process (default: host)."""
    grpc_port: int = 0
    """V2 inference port (clients); 0 = any free port (the bound one is in the endpoints)."""
    http_port: int = 0
    """REST status port; 0 = any free port."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest request or response accepted; larger ones get RESOURCE_EXHAUSTED."""
    drain_grace_s: float = 10.0
    """On SIGTERM, how long in-flight requests may take to finish."""
    consul: ConsulDiscovery | None = None
    """Find peers through Consul: register there instead of with a parent master; a master also
    finds its children there instead of taking their registrations on the control plane, and reads
    live configuration from Consul KV."""
    tls: TlsSettings | None = None
    """Certificate, key and fleet CA: TLS on every server of this process and mTLS to every peer, with
    identities from the certificates. None: plaintext, only allowed on loopback unless forced
    (:meth:`plaintext_problem`)."""
    api_keys: Path | None = None
    """Keys file: inference then needs ``authorization: Bearer <key>`` (fleet members forwarding excepted)."""
    join_token: str | None = field(default=None, repr=False)
    """With ``tls`` whose certificate does not exist yet: enrol with this join token at ``enrol``."""
    enrol: str | None = None
    """host:port of the enrolment port of the master that signs this process's certificate."""

    def load_api_keys(self) -> ApiKeys | None:
        """The API keys inference needs (None: it needs none)."""
        return ApiKeys(self.api_keys) if self.api_keys else None

    def plaintext_problem(self, *, allowed: bool) -> str | None:
        """Why this process must not start: plaintext on an address other than loopback, unless
        ``allowed`` (FOGLINE_ALLOW_INSECURE=1); None if it may."""
        if self.tls is not None or allowed or is_loopback(self.host):
            return None
        return (f"refusing to listen on {self.host} without TLS: give --tls-cert, --tls-key and --tls-ca "
                "(see docs/security.md), or set FOGLINE_ALLOW_INSECURE=1 to run in plaintext anyway")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
