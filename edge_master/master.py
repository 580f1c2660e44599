"""Wiring of an edge master: the region's embedded registry (control plane, its own server), the
device pool and the GPU workers behind the V2 service with the escalation router between them,
membership in the cloud master and its topology (workers, catalog) when one is given, REST status,
and draining."""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fogline.adapters.consul.discovery import ConsulFollower, LiveConfig
from fogline.adapters.grpc.artefacts import cache_source
from fogline.adapters.grpc.codec import V2Messages
from fogline.adapters.grpc.control import GrpcControlClient
from fogline.adapters.grpc.forward import EdgeBackend
from fogline.adapters.grpc.upstream import GrpcUpstream, StreamUpstream
from fogline.adapters.metrics import GaugeSample
from fogline.adapters.tls.enrolment import ForwardingEnroller
from fogline.core.control.limits import ControlLimits
from fogline.core.control.membership import MembershipLoop
from fogline.core.control.registry import Load, Member, MemberState, versions_by_model
from fogline.core.control.topology import TopologyFollower, TopologySnapshot, worker_states
from fogline.core.escalation.catalog import Catalog
from fogline.core.escalation.router import EdgeRouter, EdgeRoutingSettings
from fogline.core.lifecycle.cache import ArtefactCache
from fogline.core.lifecycle.traffic import VersionTraffic
from fogline.core.routing.breaker import CircuitBreaker
from fogline.core.routing.dispatch import Dispatcher
from fogline.core.routing.pool import EndpointPool
from fogline.core.security.identity import Identity, group_dns_name
from fogline.servers.dashboard import FleetView, member_node, node
from fogline.servers.lifecycle import EdgeModels, ModelSyncLoop
from fogline.servers.master import Master, MasterSettings
from fogline.servers.membership import join, leave_and_stop

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EdgeSettings(MasterSettings):
    """An edge master's settings: its children are the device nodes of its region."""

    edge_id: str = field(default_factory=lambda: f"edge-{socket.gethostname()}")
    region: str = "default"
    upstream_streams: bool = True
    """Multiplex requests to each device over one ModelStreamInfer stream (about half the CPU of a
    unary call per request); False sends each request as its own ModelInfer call."""
    cloud: str | None = None
    """host:port of the cloud master's control plane; None runs without one (and without GPU workers).
    The edge keeps serving its region, and escalating to the workers it last heard of, while the
    cloud master is unreachable. Not used with ``consul``: devices, workers, catalog and policy then
    come from Consul."""
    routing: EdgeRoutingSettings = field(default_factory=EdgeRoutingSettings)
    """Overflow threshold and how long a cascade waits for the cloud."""
    cache_dir: Path | None = None
    """Where model artefacts fetched from the cloud master are kept for the region's devices (None: a
    temporary directory, emptied with the process)."""
    cache_mb: int = 2048
    """The artefact cache's size limit, MiB; least recently used artefacts go first."""
    fetch_rate_mbps: float | None = None
    """The most this edge fetches artefacts from the cloud at, megabits a second (None: no limit)."""


class EdgeMaster(Master):
    """The master of one region: routes V2 requests over the region's device nodes and escalates
    to GPU workers by the model catalog (:class:`~fogline.core.escalation.router.EdgeRouter`).

    Device nodes register on its control plane (or are found in Consul); it is itself a member of
    the cloud master, whose topology tells it the workers and the catalog.
    """

    def __init__(self, settings: EdgeSettings) -> None:
        super().__init__(settings, tier="edge", children=frozenset({"device"}), pooled_service="device",
                         connect=self._connect, region=settings.region)
        self.settings = settings
        self.dispatcher: Dispatcher[bytes] = Dispatcher(
            self.pool, f"region {settings.region!r}",  # type: ignore[arg-type]
            replace(settings.dispatch, max_outstanding=settings.routing.device_queue_limit),
            on_attempt=self.metrics.count_attempt)
        self.workers: EndpointPool[GrpcUpstream] = EndpointPool(
            self._connect, self._disconnect, make_breaker=lambda: CircuitBreaker(settings.breaker))
        self._pools.append(self.workers)
        cloud: Dispatcher[bytes] = Dispatcher(self.workers, "the cloud tier", settings.dispatch,  # type: ignore[arg-type]
                                              on_attempt=self.metrics.count_attempt)
        self.traffic = VersionTraffic()
        self.router = EdgeRouter(self.dispatcher, cloud, V2Messages(max_message_bytes=settings.max_message_bytes),
                                 settings=settings.routing, traffic=self.traffic)
        self.models: EdgeModels | None = None
        self.model_sync: ModelSyncLoop | None = None
        self._cache_tmp: tempfile.TemporaryDirectory[str] | None = None
        self.membership: MembershipLoop | None = None
        self.topology: TopologyFollower | None = None
        self.consul: ConsulFollower | None = None
        self.live = LiveConfig()
        self.metrics.add_gauges(self._gauges)
        self.metrics.add_counters(lambda: [
            ("fogline_retry_budget_rejections", "Retries not sent because the retry budget was spent",
             {"pool": pool}, float(d.budget.rejected_total))
            for pool, d in (("devices", self.dispatcher), ("workers", self.router.cloud))])

    parent_server_name = group_dns_name("cloud")

    def identity(self) -> Identity:
        """``spiffe://fogline/edge/<region>/<id>``."""
        return Identity(service="edge", id=self.settings.edge_id, region=self.settings.region)

    def _connect(self, state: MemberState) -> GrpcUpstream:
        kind = StreamUpstream if self.settings.upstream_streams else GrpcUpstream
        return kind(state.member.address, max_message_bytes=self.settings.max_message_bytes, name=state.member.id,
                    **self.upstream_tls(state))

    def _apply_topology(self, snapshot: TopologySnapshot) -> None:
        self.router.catalog = snapshot.catalog
        self._apply_workers_with_load(snapshot.workers)

    def _apply_workers_with_load(self, workers: Iterable[tuple[Member, Load]]) -> None:
        previous = {e.id: e.state for e in self.workers.endpoints.values()}
        self.workers.sync(worker_states(workers, previous, time.monotonic()))

    def _apply_consul_workers(self, members: list[Member]) -> None:
        loads = {e.id: e.state.load for e in self.workers.endpoints.values()}
        self._apply_workers_with_load([(m, loads.get(m.id, Load())) for m in members])

    def _apply_kv(self, values: dict[str, bytes]) -> None:
        """The catalog and policy from Consul KV, applied to requests from now on."""
        assert self.settings.consul is not None
        self.live.update(values, self.settings.consul.kv_prefix)
        self.router.catalog = self.live.catalog or Catalog()
        try:
            routing = replace(self.settings.routing, **(self.live.policy or {}))
        except (TypeError, ValueError) as exc:
            self.live.error = f"consul kv policy: {exc}"
            log.error("%s; keeping the last good policy", self.live.error)
            return
        self.router.settings = routing
        self.dispatcher.settings = replace(self.dispatcher.settings, max_outstanding=routing.device_queue_limit)

    def _gauges(self) -> list[GaugeSample]:
        samples: list[GaugeSample] = [
            ("fogline_uplink_up", "1 while some GPU worker's circuit takes calls", {}, float(self.router.uplink_up)),
            ("fogline_cloud_workers", "GPU workers this edge may escalate to", {}, float(len(self.workers.endpoints)))]
        for pool, dispatcher in (("devices", self.dispatcher), ("workers", self.router.cloud)):
            plan = dispatcher.snapshot()
            samples.append(("fogline_ejected_endpoints", "Endpoints their open circuits keep out of routing",
                            {"pool": pool}, float(len(plan["ejected"]))))
        if self.consul is not None:
            samples += self.consul.gauges()
        if self.topology is not None:
            samples.append(("fogline_topology_connected", "1 while following the cloud master's topology", {},
                            float(self.topology.connected)))
        return samples

    async def start(self) -> dict[str, Any]:
        """Serve, then join the cloud master (or Consul) and follow it; the endpoints."""
        s = self.settings
        await self._secure()
        backend = EdgeBackend(self.router, name="fogline-edge", ready=lambda: bool(self.pool.endpoints),
                              metrics=self.metrics)
        client = (GrpcControlClient(s.cloud, material=self.material, server_name=self.parent_server_name)
                  if s.cloud and s.consul is None else None)
        cloud_artefacts = client.artefact_stream() if client else None
        self.models = models = EdgeModels(self.pool, self.traffic, self._cache(), cloud_artefacts, self.registry,
                                          rate_mbps=s.fetch_rate_mbps)
        self.metrics.add_gauges(models.gauges)
        self.metrics.add_counters(models.counters)
        addresses = await self._serve(backend, forward_enrolment=ForwardingEnroller(client) if client else None,
                                      models=models, artefacts=cache_source(models.cache), on_sent=models.served)
        self.endpoints = {"id": s.edge_id, "region": s.region, **addresses}
        if self.security is not None:
            self.security.start(renew_with=client)
        if s.consul is not None:
            consul_control = s.consul.control_plane(grpc_use_tls=self.security is not None)
            self.membership = join(consul_control, self._member, self._load)
            self.consul = ConsulFollower(s.consul, self.registry, mirror={"device": s.region},
                                         follow={"worker": self._apply_consul_workers}, on_kv=self._apply_kv)
            await self.consul.start()
        elif client is not None:
            self.membership = join(client, self._member, self._load)
            self.topology = TopologyFollower(client, self._apply_topology, watcher_id=s.edge_id, region=s.region)
            self.topology.start()
            membership = self.membership
            self.model_sync = ModelSyncLoop(client, s.edge_id, loaded=models.loaded, apply=models.apply,
                                            reports=models.reports, registered=membership.registered,
                                            interval=lambda: membership.interval_s)
            self.model_sync.start()
        return dict(self.endpoints)

    def _cache(self) -> ArtefactCache:
        directory = self.settings.cache_dir
        if directory is None:
            self._cache_tmp = tempfile.TemporaryDirectory(prefix="fogline-artefacts-")
            directory = Path(self._cache_tmp.name)
        return ArtefactCache(directory, self.settings.cache_mb * 1024 * 1024)

    def _member(self) -> Member:
        """This edge as the cloud master sees it; heartbeats carry its models as devices come and go:
        every name it serves, catalog names and what it reaches on GPU workers included, within bounds.

        NOTE: the list is bounded so that every Register and Heartbeat fits the control plane's 1 MiB
        message limit and passes the cloud master's ``ControlLimits`` (whatever the devices register):
        names longer than ``max_name_length`` (or unprintable) are left out, then the first
        ``max_models_per_member`` in sorted order are kept, and a WARNING says once how many were left
        out. The cloud master does not know that this edge serves a name left out: it routes requests
        for it only to other edges that list it, else answers NOT_FOUND, even for a request naming this
        edge's region. Clients connected to this edge directly are still served every name. The
        capacity reported is capped at the control plane's int32.
        """
        limits = ControlLimits()
        served = set(self.router.models())
        reported = sorted(n for n in served if limits.name_fits(n))[: limits.max_models_per_member]
        if len(reported) < len(served) and not getattr(self, "_report_cut_logged", False):
            self._report_cut_logged = True
            log.warning("this edge serves %d model names; the cloud master is told of %d (at most %d names of "
                        "at most %d characters): %d are left out and cannot be reached through the cloud master",
                        len(served), len(reported), limits.max_models_per_member, limits.max_name_length,
                        len(served) - len(reported))
        capacity = sum(e.state.member.capacity for e in self.pool.endpoints.values())
        return Member(id=self.settings.edge_id, service="edge", address=self.endpoints["grpc"],
                      region=self.settings.region, models=frozenset(reported),
                      capacity=min(max(capacity, 0), 2**31 - 1), http_address=self.endpoints["http"])

    def _load(self) -> Load:
        endpoints = self.pool.endpoints.values()
        return Load(in_flight=sum(e.outstanding for e in endpoints),
                    queue_depth=sum(e.state.load.queue_depth for e in endpoints))

    def readiness(self) -> tuple[bool, str]:
        """Ready once some device node is registered."""
        if not self.pool.endpoints:
            return False, f"no device node registered in region {self.settings.region!r}"
        return True, ""

    def status(self) -> dict[str, Any]:
        """The edge master's ``/v1/status``."""
        devices = []
        for state in self.registry.members("device", include_unchecked=True):
            m = state.member
            endpoint = self.pool.endpoints.get(m.id)
            devices.append({
                "id": m.id, "address": m.address, "http": m.http_address, "models": sorted(m.models),
                "versions": versions_by_model(m),
                "checked": state.checked,  # its health check passed: it may take traffic
                "capacity": m.capacity,
                "load": {"in_flight": state.load.in_flight, "queue_depth": state.load.queue_depth},
                "outstanding": endpoint.outstanding if endpoint else 0,
                # Registered, heartbeating, and its circuit takes calls: what routing uses.
                "healthy": endpoint is not None and endpoint.breaker.accepting,
                "breaker": endpoint.breaker.snapshot() if endpoint else None,
            })
        return {"tier": "edge", **self.endpoints, "ready": self.readiness()[0],
                "registered": self.membership.registered.is_set() if self.membership else None,
                "models": self.router.models(), "devices": devices, "dispatch": self.dispatcher.snapshot(),
                "cloud": self._cloud_status(), "discovery": self._discovery_status(),
                "lifecycle": {**self.models.status(), "sync": self.model_sync.status() if self.model_sync else None}
                if self.models else None}

    def dashboard_view(self) -> FleetView:
        """The region on the dashboard: this edge, its device nodes (read for their traffic and health)
        and the GPU workers it escalates to, each with its circuit as this edge sees it."""
        me = node(self.settings.edge_id, "edge", None, region=self.settings.region,
                  address=self.endpoints.get("grpc", ""), load=self._load())
        states = self.registry.members("device", include_unchecked=True)
        ejected = set(self.dispatcher.snapshot()["ejected"]) | set(self.router.cloud.snapshot()["ejected"])
        devices = [member_node(s, self.pool.endpoints.get(s.member.id), ejected, parent=me["id"])
                   for s in states]
        workers = [member_node(e.state, e, ejected, parent=me["id"]) for e in self.workers.endpoints.values()]
        scraped = [self.peer(s, "device") for s in states if s.member.http_address]
        return FleetView(nodes=[me, *devices, *workers], scraped=scraped, regions=[], rollouts=[])

    def _discovery_status(self) -> dict[str, Any]:
        if self.consul is None:
            return {"kind": "embedded"}
        return {**self.consul.status(), "live_config_error": self.live.error,
                "policy": {"device_queue_limit": self.router.settings.device_queue_limit,
                           "escalation_timeout_s": self.router.settings.escalation_timeout_s}}

    def _cloud_status(self) -> dict[str, Any]:
        workers = [{"id": e.id, "address": e.state.member.address, "models": sorted(e.state.member.models),
                    "outstanding": e.outstanding, "healthy": e.breaker.accepting, "breaker": e.breaker.snapshot(),
                    "load": {"in_flight": e.state.load.in_flight, "queue_depth": e.state.load.queue_depth}}
                   for e in self.workers.endpoints.values()]
        topology = self.topology.status() if self.topology else None
        return {"master": self.settings.cloud, "topology": topology, "workers": workers, **self.router.status(),
                "dispatch": self.router.cloud.snapshot()}

    async def drain(self) -> None:
        """Stop following the cloud master and Consul, leave (the cloud master stops routing here
        first), then stop serving."""
        if self.topology is not None:
            await self.topology.stop()
        if self.model_sync is not None:
            await self.model_sync.stop()
        if self.consul is not None:
            await self.consul.stop()
        await leave_and_stop(self.membership, self._stop_serving)
        if self._cache_tmp is not None:
            self._cache_tmp.cleanup()


