"""Wiring of an edge master: the region's embedded registry (control plane, its own server), the
device pool and dispatcher behind the V2 service, membership in the cloud master when one is given,
REST status, and draining."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from fogline.dispatch import Dispatcher, DispatchSettings
from fogline.grpc.control import CONTROL_MAX_MESSAGE_BYTES, ControlServicer, GrpcControlClient, add_control
from fogline.grpc.forward import ForwardingBackend
from fogline.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, bind, create_server, set_serving
from fogline.grpc.upstream import GrpcUpstream, StreamUpstream
from fogline.grpc.v2 import v2_handler
from fogline.http import start_http
from fogline.membership import MembershipLoop
from fogline.metrics import Metrics
from fogline.registry import EmbeddedRegistry, Load, Member, MemberState
from fogline.routing import EndpointPool

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EdgeSettings:
    edge_id: str = field(default_factory=lambda: f"edge-{socket.gethostname()}")
    region: str = "default"
    host: str = "127.0.0.1"
    advertise_host: str | None = None
    grpc_port: int = 0
    """V2 inference port (clients)."""
    control_port: int = 0
    """fogline.control.v1 port (device nodes); a server of its own so inference cannot starve it."""
    http_port: int = 0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    heartbeat_interval_s: float = 1.0
    """How often device nodes report."""
    member_ttl_s: float = 3.0
    """A device silent this long is dropped from routing."""
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    upstream_streams: bool = True
    """Multiplex requests to each device over one ModelStreamInfer stream (about half the CPU of a
    unary call per request); False sends each request as its own ModelInfer call."""
    drain_grace_s: float = 10.0
    cloud: str | None = None
    """host:port of the cloud master's control plane; None runs without one. The edge keeps serving
    its region while the cloud master is unreachable."""


class EdgeMaster:
    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics("edge")
        self.registry = EmbeddedRegistry(ttl_s=settings.member_ttl_s,
                                         heartbeat_interval_s=settings.heartbeat_interval_s)
        self.pool: EndpointPool[GrpcUpstream] = EndpointPool(self._connect, self._disconnect)
        self.registry.watch(lambda: self.pool.sync(self.registry.members("device")))
        self.dispatcher: Dispatcher[bytes] = Dispatcher(
            self.pool, f"region {settings.region!r}", settings.dispatch,  # type: ignore[arg-type]
            on_attempt=self._count_attempt)
        self.endpoints: dict[str, Any] = {}
        self.membership: MembershipLoop | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _connect(self, state: MemberState) -> GrpcUpstream:
        kind = StreamUpstream if self.settings.upstream_streams else GrpcUpstream
        return kind(state.member.address, max_message_bytes=self.settings.max_message_bytes, name=state.member.id)

    def _disconnect(self, upstream: GrpcUpstream) -> None:
        # A departing device (deregistered while draining) finishes the requests it has: let them
        # complete rather than cancel them; whatever is left after the grace fails over elsewhere.
        task = asyncio.ensure_future(upstream.close(self.settings.drain_grace_s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _count_attempt(self, endpoint: str, code: str) -> None:
        self.metrics.upstream.labels(endpoint, code).inc()
        if code != "OK":
            self.metrics.retries.inc()

    async def start(self) -> dict[str, Any]:
        s = self.settings
        backend = ForwardingBackend(self.dispatcher, name="fogline-edge", tier="device",
                                    ready=lambda: bool(self.pool.endpoints))
        self._server, self._health = create_server(v2_handler(backend, self.metrics),
                                                   max_message_bytes=s.max_message_bytes)
        control = ControlServicer(self.registry, region=s.region, services=frozenset({"device"}))
        self._control, _ = create_server(registrars=[add_control(control)],
                                         max_message_bytes=CONTROL_MAX_MESSAGE_BYTES)
        grpc_port = bind(self._server, s.host, s.grpc_port)
        control_port = bind(self._control, s.host, s.control_port)
        await self._control.start()
        await self._server.start()
        await set_serving(self._health, True)
        self._expiry = asyncio.create_task(self._expire_loop(), name="expire")
        self._http, http_port = await start_http(self, self.metrics, s.host, s.http_port)
        advertise = s.advertise_host or s.host
        self.endpoints = {"id": s.edge_id, "region": s.region, "grpc": f"{advertise}:{grpc_port}",
                          "control": f"{advertise}:{control_port}", "http": f"{advertise}:{http_port}"}
        if s.cloud:
            self.membership = MembershipLoop(GrpcControlClient(s.cloud), self._member, self._load)
            self.membership.start()
        return dict(self.endpoints)

    def _member(self) -> Member:
        """This edge as the cloud master sees it; heartbeats carry its models as devices come and go."""
        return Member(id=self.settings.edge_id, service="edge", address=self.endpoints["grpc"],
                      region=self.settings.region, models=frozenset(self.pool.models()),
                      capacity=sum(e.state.member.capacity for e in self.pool.endpoints.values()),
                      http_address=self.endpoints["http"])

    def _load(self) -> Load:
        endpoints = self.pool.endpoints.values()
        return Load(in_flight=sum(e.outstanding for e in endpoints),
                    queue_depth=sum(e.state.load.queue_depth for e in endpoints))

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.member_ttl_s / 4)
            self.registry.expire()

    def readiness(self) -> tuple[bool, str]:
        if not self.pool.endpoints:
            return False, f"no device node registered in region {self.settings.region!r}"
        return True, ""

    def status(self) -> dict[str, Any]:
        devices = []
        for state in self.registry.members("device"):
            m = state.member
            endpoint = self.pool.endpoints.get(m.id)
            devices.append({
                "id": m.id, "address": m.address, "http": m.http_address, "models": sorted(m.models),
                "capacity": m.capacity,
                "load": {"in_flight": state.load.in_flight, "queue_depth": state.load.queue_depth},
                "outstanding": endpoint.outstanding if endpoint else 0,
                "cooling_down": bool(endpoint and endpoint.cooldown_until > time.monotonic()),
            })
        return {"tier": "edge", **self.endpoints, "ready": self.readiness()[0],
                "cloud": self.settings.cloud,
                "registered": self.membership.registered.is_set() if self.membership else None,
                "models": self.pool.models(), "devices": devices}

    async def drain(self) -> None:
        if self.membership is not None:
            await self.membership.leave()  # the cloud master stops routing here first
        await set_serving(self._health, False)
        await self._server.stop(self.settings.drain_grace_s)
        self._expiry.cancel()
        await self._control.stop(1.0)
        await self._http.cleanup()
        self.pool.close()
        if self.membership is not None:
            await self.membership.control.close()  # type: ignore[attr-defined]
        await asyncio.gather(*self._closing, return_exceptions=True)
