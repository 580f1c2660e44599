"""fogline.control.v1 over gRPC: the servicer on a master, and the client a child uses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from fogline._proto import control_pb2 as cpb
from fogline._proto import control_pb2_grpc as cpb_grpc
from fogline.adapters.grpc.server import channel_options
from fogline.adapters.grpc.status import from_rpc_error
from fogline.adapters.grpc.v2 import abort
from fogline.core.control.registry import EmbeddedRegistry, Load, Member
from fogline.core.control.topology import TopologyPublisher, TopologySnapshot
from fogline.core.escalation.catalog import Catalog, CatalogEntry, Placement
from fogline.core.escalation.hardness import HardnessRule
from fogline.errors import FoglineError, InternalError

T = TypeVar("T")

log = logging.getLogger(__name__)

CONTROL_MAX_MESSAGE_BYTES = 1024 * 1024


def member_from_proto(m: cpb.Member) -> Member:
    """The core's member from its control-plane message."""
    return Member(id=m.id, service=m.service, address=m.address, region=m.region,
                  models=frozenset(m.models), capacity=m.capacity, http_address=m.http_address,
                  meta=dict(m.meta))


def member_to_proto(m: Member) -> cpb.Member:
    """The control-plane message of a member."""
    return cpb.Member(id=m.id, service=m.service, address=m.address, region=m.region,
                      models=sorted(m.models), capacity=m.capacity, http_address=m.http_address,
                      meta=m.meta)


def entry_to_proto(entry: CatalogEntry) -> cpb.CatalogEntry:
    """The control-plane message of a catalog entry."""
    msg = cpb.CatalogEntry(name=entry.name, placement=entry.placement.value, device_model=entry.device_model or "",
                           cloud_model=entry.cloud_model or "", output=entry.output or "")
    rule = entry.rule
    if rule is not None:
        msg.rule.CopyFrom(cpb.HardnessRule(max_prob_below=rule.max_prob_below, entropy_above=rule.entropy_above,
                                           margin_below=rule.margin_below))
    return msg


def entry_from_proto(msg: cpb.CatalogEntry) -> CatalogEntry:
    """A catalog entry from its control-plane message (unset rule thresholds stay unset)."""
    rule = None
    if msg.HasField("rule"):
        rule = HardnessRule(**{f: getattr(msg.rule, f) for f in ("max_prob_below", "entropy_above", "margin_below")
                               if msg.rule.HasField(f)})
    return CatalogEntry(name=msg.name, placement=Placement(msg.placement), device_model=msg.device_model or None,
                        cloud_model=msg.cloud_model or None, rule=rule, output=msg.output or None)


def topology_to_proto(snapshot: TopologySnapshot) -> cpb.Topology:
    """The ``WatchTopology`` message of a snapshot."""
    return cpb.Topology(
        version=snapshot.version, refresh_ms=int(snapshot.refresh_s * 1000),
        workers=[cpb.WorkerState(member=member_to_proto(m), load=cpb.Load(in_flight=load.in_flight,
                                                                          queue_depth=load.queue_depth))
                 for m, load in snapshot.workers],
        catalog=[entry_to_proto(e) for e in snapshot.catalog.entries.values()])


def topology_from_proto(msg: cpb.Topology) -> TopologySnapshot:
    """A snapshot from its ``WatchTopology`` message; InternalError for a catalog this edge cannot read."""
    try:
        catalog = Catalog(entry_from_proto(e) for e in msg.catalog)
    except ValueError as exc:  # a newer cloud master's catalog this edge cannot use
        raise InternalError(f"the cloud master sent a catalog this edge master cannot read: {exc}") from None
    return TopologySnapshot(
        version=msg.version, refresh_s=msg.refresh_ms / 1000 or 1.0, catalog=catalog,
        workers=tuple((member_from_proto(w.member), Load(in_flight=w.load.in_flight, queue_depth=w.load.queue_depth))
                      for w in msg.workers))


class ControlServicer(cpb_grpc.ControlServicer):
    """Registers children of a master into its embedded registry, whose rules decide who may join;
    on the cloud master, also streams the topology to edge masters."""

    def __init__(self, registry: EmbeddedRegistry, *, topology: TopologyPublisher | None = None) -> None:
        self.registry = registry
        self.topology = topology

    async def Register(self, request: cpb.RegisterRequest,
                       context: grpc.aio.ServicerContext) -> cpb.RegisterResponse:
        """Admit the member into the registry; INVALID_ARGUMENT if it may not join."""
        try:
            self.registry.admit(member_from_proto(request.member))
        except FoglineError as exc:
            await abort(context, exc)
        return cpb.RegisterResponse(heartbeat_interval_ms=int(self.registry.heartbeat_interval_s * 1000),
                                    ttl_ms=int(self.registry.ttl_s * 1000))

    async def Heartbeat(self, request: cpb.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> cpb.HeartbeatResponse:
        """Record the member's load and models; ``known`` is False if it must register again."""
        load = Load(in_flight=request.load.in_flight, queue_depth=request.load.queue_depth)
        known = self.registry.heartbeat(request.id, load, request.models or None)
        return cpb.HeartbeatResponse(known=known)

    async def Deregister(self, request: cpb.DeregisterRequest,
                         context: grpc.aio.ServicerContext) -> cpb.DeregisterResponse:
        """Drop the member (nothing happens for an unknown one)."""
        self.registry.deregister(request.id)
        return cpb.DeregisterResponse()

    async def WatchTopology(self, request: cpb.WatchTopologyRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[cpb.Topology]:
        """Stream the cloud master's topology; UNIMPLEMENTED on an edge master."""
        if self.topology is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "only the cloud master serves a topology; point --cloud at its control address")
            return
        log.info("edge master %s (region %s) follows the topology", request.watcher_id, request.region)
        async for snapshot in self.topology.updates():
            yield topology_to_proto(snapshot)


class GrpcControlClient:
    """A child's end of the control plane (implements ``fogline.core.control.membership.ControlPlane``)."""

    def __init__(self, address: str, *, timeout_s: float = 2.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(address, options=channel_options(CONTROL_MAX_MESSAGE_BYTES))
        self._stub = cpb_grpc.ControlStub(self._channel)

    async def _call(self, rpc: Callable[..., Awaitable[T]], request: object) -> T:
        """One unary call; a failed one raises the FoglineError of its status."""
        try:
            return await rpc(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, peer=f"master {self.address}") from None

    async def register(self, member: Member) -> tuple[float, float]:
        """Join the master; its (heartbeat interval, ttl) in seconds."""
        reply = await self._call(self._stub.Register, cpb.RegisterRequest(member=member_to_proto(member)))
        return reply.heartbeat_interval_ms / 1000, reply.ttl_ms / 1000

    async def heartbeat(self, member_id: str, load: Load, models: list[str]) -> bool:
        """Report load and models; False if the master no longer knows ``member_id``."""
        request = cpb.HeartbeatRequest(id=member_id, load=cpb.Load(in_flight=load.in_flight,
                                                                   queue_depth=load.queue_depth),
                                       models=models)
        reply = await self._call(self._stub.Heartbeat, request)
        return bool(reply.known)

    async def deregister(self, member_id: str) -> None:
        """Leave the master."""
        await self._call(self._stub.Deregister, cpb.DeregisterRequest(id=member_id))

    async def watch(self, watcher_id: str, region: str) -> AsyncIterator[TopologySnapshot]:
        """The cloud master's topology stream (implements ``fogline.core.control.topology.TopologySource``)."""
        call = self._stub.WatchTopology(cpb.WatchTopologyRequest(watcher_id=watcher_id, region=region))
        try:
            async for msg in call:
                yield topology_from_proto(msg)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, peer=f"cloud master {self.address}") from None
        finally:
            call.cancel()

    async def close(self) -> None:
        """Close the channel to the master."""
        await self._channel.close()


def add_control(servicer: ControlServicer) -> Callable[[grpc.aio.Server], None]:
    """A registrar for ``create_server``."""
    return lambda server: cpb_grpc.add_ControlServicer_to_server(servicer, server)
