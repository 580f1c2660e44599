"""Wiring of the cloud master, the root of the control plane: the embedded registry of edge masters
and GPU workers (control plane, its own server), a global V2 entry point that forwards to an edge
master (of the region a request names, or of any region holding the model), REST status with the
topology, the model catalog, the model registry (``--model-store``: pushes on the admin API, reads on
``/v1/models``), and draining. Edge masters follow the workers and the catalog over
``WatchTopology`` and escalate to the workers directly."""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogline.adapters.consul.discovery import ConsulFollower, LiveConfig
from fogline.adapters.consul.rollouts import ConsulMirroredStore
from fogline.adapters.grpc.artefacts import registry_source
from fogline.adapters.grpc.forward import RegionalBackend
from fogline.adapters.grpc.upstream import GrpcUpstream, StreamUpstream
from fogline.adapters.http.peers import fetch_statuses
from fogline.core.control.limits import ControlLimits
from fogline.core.control.membership import MembershipLoop
from fogline.core.control.peer_status import edge_devices
from fogline.core.control.registry import Load, Member, MemberState, versions_by_model
from fogline.core.control.topology import TopologyPublisher
from fogline.core.escalation.catalog import Catalog, describe, load_catalog
from fogline.core.lifecycle.registry import ModelRegistry
from fogline.core.lifecycle.rollout import JsonFileStore, RolloutController, RolloutStore
from fogline.core.routing.dispatch import RegionalDispatch
from fogline.core.security.identity import Identity
from fogline.servers.dashboard import FleetView, member_node, node
from fogline.servers.lifecycle import CloudModels
from fogline.servers.master import Master, MasterSettings
from fogline.servers.membership import join, leave_and_stop
from fogline.servers.models_admin import DEFAULT_MAX_MODEL_BYTES, ModelRoutes
from fogline.servers.rollouts_admin import RolloutRoutes
from fogline.servers.security import member_identity

log = logging.getLogger(__name__)

SERVICES = frozenset({"edge", "worker"})


@dataclass(kw_only=True)
class CloudSettings(MasterSettings):
    """The cloud master's settings: its children are the edge masters and GPU workers. Its gRPC port
    is the global V2 entry point; its REST port adds /v1/topology."""

    cloud_id: str = field(default_factory=lambda: f"cloud-{socket.gethostname()}")
    """Identity in status and topology."""
    peer_status_timeout_s: float = 1.0
    """How long /v1/topology waits for each member's own status."""
    catalog: Path | None = None
    """The model catalog (TOML, see ``fogline.core.escalation.catalog``); None: every model runs where it is held.
    With ``consul``, a catalog in Consul KV overrides it."""
    topology_refresh_s: float = 2.0
    """Edge masters get the workers and catalog on every change and at least this often."""
    model_store: Path | None = None
    """The model registry's directory (content-addressed versions pushed over the admin API); None: no
    registry (pushes and ``/v1/models`` answer UNAVAILABLE)."""
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    """The largest model push accepted (its upload, and a directory's unpacked files)."""


class CloudMaster(Master):
    """The root of the control plane: edge masters and GPU workers of every region register with it.

    Its V2 service forwards each request to an edge master (of the region it names, or of any
    region holding the model); it publishes the workers and the catalog to the edge masters
    (:class:`~fogline.core.control.topology.TopologyPublisher`) and serves ``/v1/topology``.
    """

    def __init__(self, settings: CloudSettings) -> None:
        super().__init__(settings, tier="cloud", children=SERVICES, pooled_service="edge",
                         connect=self._connect)  # no region: its children come from every region
        self.settings = settings
        self.routing: RegionalDispatch[bytes] = RegionalDispatch(
            self.pool, settings.dispatch, on_attempt=self.metrics.count_attempt)  # type: ignore[arg-type]
        self.registry.watch(self.routing.sync)  # after the pool's own watcher: it reads the synced pool
        self.file_catalog = load_catalog(settings.catalog) if settings.catalog else Catalog()
        self.publisher = TopologyPublisher(self.registry, self.file_catalog, refresh_s=settings.topology_refresh_s)
        self.consul: ConsulFollower | None = None
        self.membership: MembershipLoop | None = None
        self.live = LiveConfig()
        self.models = ModelRegistry(settings.model_store) if settings.model_store else None
        self.model_routes = ModelRoutes(self.models, max_model_bytes=settings.max_model_bytes)
        # NOTE: rollouts live beside the registry, so that both survive a restart together.
        store = self._rollout_store(settings) if settings.model_store else None
        self._kv_mirror = store if isinstance(store, ConsulMirroredStore) else None
        self.rollouts = RolloutController(store) if store is not None else None
        self.lifecycle = CloudModels(self.rollouts, self.registry) if self.rollouts else None
        self.rollout_routes = RolloutRoutes(self.models, self.rollouts,
                                            self.lifecycle.serving if self.lifecycle else lambda model: [])
        self.metrics.add_counters(self._artefact_counters)
        self.metrics.add_gauges(self._rollout_gauges)

    @staticmethod
    def _rollout_store(settings: CloudSettings) -> RolloutStore:
        """``<model-store>/rollouts.json``; under Consul discovery also mirrored into KV (``<prefix>/rollouts/``)."""
        assert settings.model_store is not None
        store: RolloutStore = JsonFileStore(settings.model_store / "rollouts.json")
        if settings.consul is not None:
            store = ConsulMirroredStore(store, settings.consul.consul, settings.consul.kv_prefix)
        return store

    def identity(self) -> Identity:
        """``spiffe://fogline/cloud/<id>``."""
        return Identity(service="cloud", id=self.settings.cloud_id)

    def _connect(self, state: MemberState) -> GrpcUpstream:
        return StreamUpstream(state.member.address, max_message_bytes=self.settings.max_message_bytes,
                              name=state.member.id, **self.upstream_tls(state))

    async def start(self) -> dict[str, Any]:
        """Serve, then join and follow Consul when configured; the endpoints."""
        s = self.settings
        await self._secure()
        backend = RegionalBackend(self.routing, name="fogline-cloud", ready=lambda: bool(self.pool.endpoints))
        routes = {"/v1/topology": self.topology, **self.model_routes.status_routes(),
                  **self.rollout_routes.status_routes()}
        lifecycle = self.lifecycle
        addresses = await self._serve(backend, topology=self.publisher, routes=routes, models=lifecycle,
                                      artefacts=registry_source(self.models) if self.models else None,
                                      on_sent=lifecycle.sent if lifecycle else None)
        if lifecycle is not None:
            lifecycle.start()
        self.endpoints = {"id": s.cloud_id, **addresses}
        if self.security is not None:
            self.security.start(renew_with=self.self_renewer())
        if s.consul is not None:
            consul_control = s.consul.control_plane(grpc_use_tls=self.security is not None)
            self.membership = join(consul_control, self._member, Load)
            self.consul = ConsulFollower(s.consul, self.registry, mirror={"edge": None, "worker": None},
                                         on_kv=self._apply_kv)
            await self.consul.start()
            self.metrics.add_gauges(self.consul.gauges)
        return dict(self.endpoints)

    def extra_admin_routes(self) -> dict[tuple[str, str], Any]:
        """The model registry's admin routes (push, list, show) and the rollouts'."""
        return {**self.model_routes.admin_routes(), **self.rollout_routes.admin_routes()}

    def _artefact_counters(self) -> list[tuple[str, str, dict[str, str], float]]:
        sent = self.lifecycle.bytes_sent if self.lifecycle else 0
        return [("fogline_artefact_bytes_sent", "Artefact bytes this master sent to its members", {}, float(sent))]

    def _rollout_gauges(self) -> list[tuple[str, str, dict[str, str], float]]:
        if self.rollouts is None:
            return []
        out = []
        for r in self.rollouts.list():
            labels = {"model": r.model, "version": r.version}
            out.append(("fogline_rollout_percent", "Share of the model's traffic the rollout's version has now, %",
                        labels, float(r.percent if r.state in ("running", "paused") else
                                      100 if r.state == "done" else 0)))
            for state in ("running", "paused", "done", "rolled_back"):
                out.append(("fogline_rollout_state", "1 for the rollout's state", {**labels, "state": state},
                            float(r.state == state)))
        return out

    def _member(self) -> Member:
        return Member(id=self.settings.cloud_id, service="cloud", address=self.endpoints["grpc"],
                      models=frozenset(self.pool.models()), http_address=self.endpoints["http"])

    def _apply_kv(self, values: dict[str, bytes]) -> None:
        assert self.settings.consul is not None
        self.live.update(values, self.settings.consul.kv_prefix)
        self.publisher.set_catalog(self.live.catalog or self.file_catalog)

    def readiness(self) -> tuple[bool, str]:
        """Ready once some edge master is registered."""
        if not self.pool.endpoints:
            return False, "no edge master registered"
        return True, ""

    def _describe(self, state: MemberState) -> dict[str, Any]:
        m = state.member
        endpoint = self.pool.endpoints.get(m.id)
        return {"id": m.id, "region": m.region, "address": m.address, "http": m.http_address,
                "models": sorted(m.models), "versions": versions_by_model(m), "capacity": m.capacity,
                "checked": state.checked,
                "load": {"in_flight": state.load.in_flight, "queue_depth": state.load.queue_depth,
                         "outstanding": endpoint.outstanding if endpoint else 0},
                "breaker": endpoint.breaker.snapshot() if endpoint else None}

    def status(self) -> dict[str, Any]:
        """The cloud master's ``/v1/status``."""
        return {"tier": "cloud", **self.endpoints, "ready": self.readiness()[0],
                "regions": sorted(self.routing.regions), "models": self.pool.models(),
                "edges": [self._describe(s) for s in self.registry.members("edge", include_unchecked=True)],
                "workers": [self._describe(s) for s in self.registry.members("worker", include_unchecked=True)],
                "topology_version": self.publisher.version, "dispatch": self.routing.any.snapshot(),
                "catalog": [describe(e) for e in self.publisher.catalog.entries.values()],
                "rollouts": [self.rollouts.status_json(r.model) for r in self.rollouts.list()] if self.rollouts else [],
                "artefact_bytes_sent": self.lifecycle.bytes_sent if self.lifecycle else 0,
                "discovery": {**self.consul.status(), "live_config_error": self.live.error} if self.consul
                else {"kind": "embedded"}}

    async def topology(self) -> dict[str, Any]:
        """Regions → edge masters → their device nodes (each edge's own status), and the GPU workers.

        Only members the registry routes to are read (``members()``: once checks are required, those
        whose address passed a health check). What an edge's status says of its devices is copied only
        as far as :func:`~fogline.core.control.peer_status.edge_devices` checks it: known fields, of
        their types, within the registry's limits. With TLS each status is read over HTTPS from a server
        that proves to be the member that registered the address. ``healthy``: the member answered its
        status within the timeout and says it is ready; an edge whose status is malformed is unhealthy
        with no devices.
        """
        edges = self.registry.members("edge")
        workers = self.registry.members("worker")
        addresses, tls = _status_reads([s.member for s in edges + workers if s.member.http_address],
                                       self.peer_ssl())
        statuses = await fetch_statuses(addresses, self.settings.peer_status_timeout_s, **tls)
        regions: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for state in edges:
            entry = {**self._describe(state), **_edge_report(statuses.get(state.member.http_address),
                                                             self.registry.limits)}
            regions.setdefault(state.member.region, {"edges": []})["edges"].append(entry)
        return {"cloud": self.endpoints.get("id"), "regions": regions,
                "workers": [{**self._describe(s), "healthy": _healthy(statuses.get(s.member.http_address))}
                            for s in workers]}

    def dashboard_view(self) -> FleetView:
        """The fleet on the dashboard: this master, a node per region with its edge masters (read for
        their region: devices, traffic, events), and the GPU workers (read for their traffic and health)."""
        me = node(self.settings.cloud_id, "cloud", None, address=self.endpoints.get("grpc", ""))
        ejected = set(self.routing.any.snapshot()["ejected"])
        edges = self.registry.members("edge", include_unchecked=True)
        workers = self.registry.members("worker", include_unchecked=True)
        regions = sorted({s.member.region for s in edges})
        nodes = [me, *(node(r, "region", me["id"], region=r) for r in regions),
                 *(member_node(s, self.pool.endpoints.get(s.member.id), ejected, parent=s.member.region)
                   for s in edges),
                 # NOTE: the edges route to the workers, not this master: their health is whether they answer
                 *(member_node(s, None, ejected, parent=me["id"], routed=False) for s in workers)]
        rollouts = [self.rollouts.status_json(r.model) for r in self.rollouts.list()] if self.rollouts else []
        return FleetView(nodes=nodes, scraped=[self.peer(s, "worker") for s in workers if s.member.http_address],
                         regions=[self.peer(s, "edge") for s in edges if s.member.http_address], rollouts=rollouts)

    async def drain(self) -> None:
        """Stop following Consul, leave it, then stop serving."""
        if self.lifecycle is not None:
            await self.lifecycle.stop()
        if self._kv_mirror is not None:
            await self._kv_mirror.close()
        if self.consul is not None:
            await self.consul.stop()
        await leave_and_stop(self.membership, self._stop_serving)


def _healthy(status: dict[str, Any] | None) -> bool:
    """The member answered its status and says it is ready (``true`` itself: nothing merely truthy)."""
    return status is not None and status.get("ready") is True


def _status_reads(members: list[Member], context: ssl.SSLContext | None) -> tuple[list[str], dict[str, Any]]:
    """The REST addresses to read, and ``fetch_statuses``' TLS arguments: with ``context`` (TLS) each
    server must prove to be the member that registered the address; an address no certificate can
    name, or one that members of different identities claim, is not read (so shows unhealthy)."""
    if context is None:
        return [m.http_address for m in members], {}
    names: dict[str, set[str]] = {}
    for m in members:
        identity = member_identity(m.service, m.id, m.region)
        names.setdefault(m.http_address, set()).add(identity.dns_name if identity else "")
    verified = {address: next(iter(n)) for address, n in names.items() if len(n) == 1 and "" not in n}
    return list(verified), {"ssl": context, "server_names": verified}


def _edge_report(status: dict[str, Any] | None, limits: ControlLimits) -> dict[str, Any]:
    """An edge's ``healthy`` and ``devices`` for /v1/topology, from its status as far as it checks."""
    devices = edge_devices(status, limits) if status is not None else None
    if devices is None:
        return {"healthy": False, "devices": []}
    return {"healthy": _healthy(status), "devices": devices}
