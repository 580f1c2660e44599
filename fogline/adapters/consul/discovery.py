"""How a process finds its peers (DESIGN.md §4): the embedded registry of its parent master (the
default), or Consul.

With Consul, every process registers itself (``fogline-<service>``, with a gRPC health check) and
each master watches the passing members of the services it needs and mirrors them into its
embedded registry (:meth:`~fogline.core.control.registry.EmbeddedRegistry.sync_service`), so that routing,
status and topology work the same with either. Configuration a master applies live is read from
Consul KV under ``<kv_prefix>/``: ``catalog`` (the model catalog, TOML as in ``fogline.core.escalation.catalog``)
and ``policy`` (TOML: ``device_queue_limit``, ``escalation_timeout_s``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fogline.adapters.consul.client import (
    ConsulSettings,
)
from fogline.adapters.consul.registration import ConsulControlPlane
from fogline.adapters.consul.watch import KVWatch, ServiceWatch
from fogline.adapters.metrics import GaugeSample
from fogline.core.control.registry import EmbeddedRegistry, Member
from fogline.core.escalation.catalog import Catalog, CatalogError, parse_catalog
from fogline.core.toml import tomllib

log = logging.getLogger(__name__)

POLICY_KEYS = frozenset({"device_queue_limit", "escalation_timeout_s"})


@dataclass(frozen=True, kw_only=True)
class ConsulDiscovery:
    """Discovery through the local Consul agent."""

    consul: ConsulSettings
    """Where the agent is, the ACL token (never logged) and TLS."""
    check_interval_s: float = 2.0
    """How often the agent checks a process's grpc.health.v1 (a dead process leaves routing through
    the breakers much sooner)."""
    deregister_critical_after_s: float = 60.0
    """The agent drops a process whose check has been critical this long (Consul's minimum: 60 s)."""
    kv_prefix: str = "fogline"
    """Where the live configuration lives in Consul KV."""
    watch_wait_s: float = 30.0
    """The longest a blocking query waits for a change (jittered)."""
    watch_max_backoff_s: float = 5.0
    """Cap of the backoff between queries while Consul cannot be reached: how soon a master is in
    sync again once it is back."""

    def control_plane(self, *, grpc_use_tls: bool = False) -> ConsulControlPlane:
        """Where this process registers itself; ``grpc_use_tls``: its gRPC health check speaks TLS."""
        return ConsulControlPlane(self.consul, check_interval_s=self.check_interval_s,
                                  deregister_critical_after_s=self.deregister_critical_after_s,
                                  grpc_use_tls=grpc_use_tls)

    def watch(self, service: str, on_change: Callable[[list[Member]], None],
              region: str | None = None) -> ServiceWatch:
        """A watch of the passing members of ``service`` (of ``region`` only, when given)."""
        return ServiceWatch(self.consul, service, on_change, region=region, wait_s=self.watch_wait_s,
                            max_backoff_s=self.watch_max_backoff_s)

    def kv(self, on_change: Callable[[dict[str, bytes]], None]) -> KVWatch:
        """A watch of the live configuration under ``<kv_prefix>/``."""
        return KVWatch(self.consul, f"{self.kv_prefix}/", on_change, wait_s=self.watch_wait_s,
                       max_backoff_s=self.watch_max_backoff_s)

    def describe(self) -> dict[str, Any]:
        """How discovery is configured, for status (the token only as set or not)."""
        return {"kind": "consul", "address": self.consul.url, "token": "<set>" if self.consul.token else "<none>",
                "kv_prefix": self.kv_prefix}


class ConsulFollower:
    """A master's view of Consul: the services it mirrors into its registry (or hands to a callback),
    and the live configuration in KV. Keeps the last state whenever Consul cannot be reached."""

    def __init__(self, discovery: ConsulDiscovery, registry: EmbeddedRegistry, *,
                 mirror: Mapping[str, str | None] = {},
                 follow: Mapping[str, Callable[[list[Member]], None]] = {},
                 on_kv: Callable[[dict[str, bytes]], None] | None = None) -> None:
        self.discovery = discovery
        self.watches = [discovery.watch(service, _mirror(registry, service), region or None)
                        for service, region in mirror.items()]
        self.watches += [discovery.watch(service, callback) for service, callback in follow.items()]
        self.kv = discovery.kv(on_kv) if on_kv is not None else None

    def _all(self) -> list[ServiceWatch | KVWatch]:
        return [*self.watches, *([self.kv] if self.kv else [])]

    async def start(self) -> None:
        """Start every watch."""
        for watch in self._all():
            await watch.start()

    async def stop(self) -> None:
        """Stop every watch."""
        for watch in self._all():
            await watch.stop()

    @property
    def connected(self) -> bool:
        """Whether every watch is in sync with Consul."""
        return all(w.connected for w in self._all())

    def status(self) -> dict[str, Any]:
        """Discovery's state for ``/v1/status``."""
        return {**self.discovery.describe(), "connected": self.connected,
                "watches": [w.status() for w in self._all()]}

    def gauges(self) -> list[GaugeSample]:
        """One gauge per watch: 1 while it is in sync."""
        return [("fogline_discovery_connected", "1 while the Consul watch is in sync", {"watch": w.name},
                 float(w.connected)) for w in self._all()]


def _mirror(registry: EmbeddedRegistry, service: str) -> Callable[[list[Member]], None]:
    return lambda members: registry.sync_service(service, members)


@dataclass
class LiveConfig:
    """The catalog and policy last read from KV, and the last problem with them."""

    catalog: Catalog | None = None
    policy: dict[str, Any] | None = None
    error: str | None = None

    def update(self, values: dict[str, bytes], prefix: str) -> None:
        """Parse ``<prefix>/catalog`` and ``<prefix>/policy``; a bad value is reported and the last good one kept."""
        self.error = None
        catalog = values.get(f"{prefix}/catalog")
        try:
            self.catalog = parse_catalog(tomllib.loads(catalog.decode()), f"consul kv {prefix}/catalog") \
                if catalog else None
        except (CatalogError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            self._fail(f"consul kv {prefix}/catalog: {exc}")
        policy = values.get(f"{prefix}/policy")
        try:
            self.policy = _policy(tomllib.loads(policy.decode()), prefix) if policy else None
        except (ValueError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            self._fail(f"consul kv {prefix}/policy: {exc}")

    def _fail(self, message: str) -> None:
        self.error = message
        log.error("%s; keeping the last good value", message)


def _policy(raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    unknown = sorted(set(raw) - POLICY_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; known: {sorted(POLICY_KEYS)}")
    return raw
