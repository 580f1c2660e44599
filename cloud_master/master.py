"""Wiring of the cloud master, the root of the control plane: the embedded registry of edge masters
and GPU workers (control plane, its own server), a global V2 entry point that forwards to an edge
master (of the region a request names, or of any region holding the model), REST status with the
topology, and draining. Escalation from the edges to the workers is not wired yet."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from fogline.dispatch import DispatchSettings, RegionalDispatch
from fogline.grpc.control import CONTROL_MAX_MESSAGE_BYTES, ControlServicer, add_control
from fogline.grpc.forward import RegionalBackend
from fogline.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, bind, create_server, set_serving
from fogline.grpc.upstream import GrpcUpstream, StreamUpstream
from fogline.grpc.v2 import v2_handler
from fogline.http import start_http
from fogline.http.peers import fetch_statuses
from fogline.metrics import Metrics
from fogline.registry import EmbeddedRegistry, MemberState
from fogline.routing import EndpointPool

log = logging.getLogger(__name__)

SERVICES = frozenset({"edge", "worker"})


@dataclass(kw_only=True)
class CloudSettings:
    cloud_id: str = field(default_factory=lambda: f"cloud-{socket.gethostname()}")
    """Identity in status and topology."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    advertise_host: str | None = None
    """Address peers use to reach this process (default: host)."""
    grpc_port: int = 0
    """Global V2 inference port (clients); 0 = any free port."""
    control_port: int = 0
    """fogline.control.v1 port (edge masters, GPU workers); a server of its own so inference cannot starve it."""
    http_port: int = 0
    """REST status and topology port; 0 = any free port."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest request or response accepted; larger ones get RESOURCE_EXHAUSTED."""
    heartbeat_interval_s: float = 1.0
    """How often edge masters and workers report (their load and models)."""
    member_ttl_s: float = 3.0
    """An edge master or worker silent this long is dropped from routing and topology."""
    peer_status_timeout_s: float = 1.0
    """How long /v1/topology waits for each member's own status."""
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    """Retries and deadlines of requests forwarded to edge masters."""
    drain_grace_s: float = 10.0
    """On SIGTERM, how long in-flight requests may take to finish."""


class CloudMaster:
    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.metrics = Metrics("cloud")
        self.registry = EmbeddedRegistry(ttl_s=settings.member_ttl_s,
                                         heartbeat_interval_s=settings.heartbeat_interval_s)
        self.pool: EndpointPool[GrpcUpstream] = EndpointPool(self._connect, self._disconnect)
        self.routing: RegionalDispatch[bytes] = RegionalDispatch(
            self.pool, settings.dispatch, on_attempt=self._count_attempt)  # type: ignore[arg-type]
        self.registry.watch(self._sync)
        self.endpoints: dict[str, Any] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _sync(self) -> None:
        self.pool.sync(self.registry.members("edge"))
        self.routing.sync()

    def _connect(self, state: MemberState) -> GrpcUpstream:
        return StreamUpstream(state.member.address, max_message_bytes=self.settings.max_message_bytes,
                              name=state.member.id)

    def _disconnect(self, upstream: GrpcUpstream) -> None:
        # A departing edge finishes what it has in flight; see EdgeMaster._disconnect.
        task = asyncio.ensure_future(upstream.close(self.settings.drain_grace_s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _count_attempt(self, endpoint: str, code: str) -> None:
        self.metrics.upstream.labels(endpoint, code).inc()
        if code != "OK":
            self.metrics.retries.inc()

    async def start(self) -> dict[str, Any]:
        s = self.settings
        backend = RegionalBackend(self.routing, name="fogline-cloud", ready=lambda: bool(self.pool.endpoints))
        self._server, self._health = create_server(v2_handler(backend, self.metrics),
                                                   max_message_bytes=s.max_message_bytes)
        control = ControlServicer(self.registry, region="", services=SERVICES)  # "": members of every region
        self._control, _ = create_server(registrars=[add_control(control)],
                                         max_message_bytes=CONTROL_MAX_MESSAGE_BYTES)
        grpc_port = bind(self._server, s.host, s.grpc_port)
        control_port = bind(self._control, s.host, s.control_port)
        await self._control.start()
        await self._server.start()
        await set_serving(self._health, True)
        self._expiry = asyncio.create_task(self._expire_loop(), name="expire")
        self._http, http_port = await start_http(self, self.metrics, s.host, s.http_port,
                                                  routes={"/v1/topology": self.topology})
        advertise = s.advertise_host or s.host
        self.endpoints = {"id": s.cloud_id, "grpc": f"{advertise}:{grpc_port}",
                          "control": f"{advertise}:{control_port}", "http": f"{advertise}:{http_port}"}
        return dict(self.endpoints)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.member_ttl_s / 4)
            self.registry.expire()

    def readiness(self) -> tuple[bool, str]:
        if not self.pool.endpoints:
            return False, "no edge master registered"
        return True, ""

    def _describe(self, state: MemberState) -> dict[str, Any]:
        m = state.member
        endpoint = self.pool.endpoints.get(m.id)
        return {"id": m.id, "region": m.region, "address": m.address, "http": m.http_address,
                "models": sorted(m.models), "capacity": m.capacity,
                "load": {"in_flight": state.load.in_flight, "queue_depth": state.load.queue_depth,
                         "outstanding": endpoint.outstanding if endpoint else 0}}

    def status(self) -> dict[str, Any]:
        return {"tier": "cloud", **self.endpoints, "ready": self.readiness()[0],
                "regions": sorted(self.routing.regions), "models": self.pool.models(),
                "edges": [self._describe(s) for s in self.registry.members("edge")],
                "workers": [self._describe(s) for s in self.registry.members("worker")]}

    async def topology(self) -> dict[str, Any]:
        """Regions → edge masters → their device nodes (each edge's own status), and the GPU workers.

        ``healthy``: the member answered its status within the timeout and says it is ready.
        """
        edges = self.registry.members("edge")
        workers = self.registry.members("worker")
        statuses = await fetch_statuses([s.member.http_address for s in edges + workers if s.member.http_address],
                                        self.settings.peer_status_timeout_s)
        regions: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for state in edges:
            status = statuses.get(state.member.http_address)
            entry = {**self._describe(state), "healthy": _healthy(status),
                     "devices": status.get("devices", []) if status else []}
            regions.setdefault(state.member.region, {"edges": []})["edges"].append(entry)
        return {"cloud": self.endpoints.get("id"), "regions": regions,
                "workers": [{**self._describe(s), "healthy": _healthy(statuses.get(s.member.http_address))}
                            for s in workers]}

    async def drain(self) -> None:
        await set_serving(self._health, False)
        await self._server.stop(self.settings.drain_grace_s)
        self._expiry.cancel()
        await self._control.stop(1.0)
        await self._http.cleanup()
        self.pool.close()
        await asyncio.gather(*self._closing, return_exceptions=True)


def _healthy(status: dict[str, Any] | None) -> bool:
    return bool(status and status.get("ready"))
