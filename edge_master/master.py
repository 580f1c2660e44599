"""Wiring of an edge master: the region's embedded registry (control plane, its own server), the
device pool and dispatcher behind the V2 service, membership in the cloud master when one is given,
REST status, and draining."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from fogline.dispatch import Dispatcher, DispatchSettings
from fogline.grpc.control import ControlServicer, GrpcControlClient
from fogline.grpc.forward import ForwardingBackend
from fogline.grpc.server import DEFAULT_MAX_MESSAGE_BYTES
from fogline.grpc.upstream import GrpcUpstream, StreamUpstream
from fogline.master import Master
from fogline.membership import MembershipLoop
from fogline.registry import Load, Member, MemberState

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


class EdgeMaster(Master):
    def __init__(self, settings: EdgeSettings) -> None:
        super().__init__(tier="edge", pooled_service="device", member_ttl_s=settings.member_ttl_s,
                         heartbeat_interval_s=settings.heartbeat_interval_s,
                         max_message_bytes=settings.max_message_bytes, drain_grace_s=settings.drain_grace_s,
                         connect=self._connect)
        self.settings = settings
        self.dispatcher: Dispatcher[bytes] = Dispatcher(
            self.pool, f"region {settings.region!r}", settings.dispatch,  # type: ignore[arg-type]
            on_attempt=self._count_attempt)
        self.membership: MembershipLoop | None = None

    def _connect(self, state: MemberState) -> GrpcUpstream:
        kind = StreamUpstream if self.settings.upstream_streams else GrpcUpstream
        return kind(state.member.address, max_message_bytes=self.settings.max_message_bytes, name=state.member.id)

    async def start(self) -> dict[str, Any]:
        s = self.settings
        backend = ForwardingBackend(self.dispatcher, name="fogline-edge", tier="device",
                                    ready=lambda: bool(self.pool.endpoints))
        control = ControlServicer(self.registry, region=s.region, services=frozenset({"device"}))
        addresses = await self._serve(backend, control, host=s.host, advertise_host=s.advertise_host,
                                      grpc_port=s.grpc_port, control_port=s.control_port, http_port=s.http_port)
        self.endpoints = {"id": s.edge_id, "region": s.region, **addresses}
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
        await self._stop_serving()
        if self.membership is not None:
            await self.membership.control.close()  # type: ignore[attr-defined]
