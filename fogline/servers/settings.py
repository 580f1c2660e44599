"""The settings every Fogline process has, master or model server: where it listens, what it
accepts, how long it drains, and whether it finds its peers through Consul."""

from __future__ import annotations

from dataclasses import dataclass

from fogline.adapters.consul.discovery import ConsulDiscovery
from fogline.adapters.grpc.server import DEFAULT_MAX_MESSAGE_BYTES


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
