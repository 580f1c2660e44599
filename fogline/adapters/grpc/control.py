"""fogline.control.v1 over gRPC: the servicer on a master, and the client a child uses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from fogline._proto import control_pb2 as cpb
from fogline._proto import control_pb2_grpc as cpb_grpc
from fogline.adapters.grpc.artefacts import BlobSource, OpenStream, serve_artefact, stub_stream
from fogline.adapters.grpc.lifecycle import (
    install_from_proto,
    install_to_proto,
    plan_from_proto,
    plan_to_proto,
    report_from_proto,
    report_to_proto,
)
from fogline.adapters.grpc.server import channel_options
from fogline.adapters.grpc.status import from_rpc_error
from fogline.adapters.grpc.v2 import abort
from fogline.adapters.tls.credentials import open_channel, peer_identity, server_tls_channel
from fogline.adapters.tls.enrolment import Enroller, Issued
from fogline.adapters.tls.material import TlsMaterial
from fogline.core.control.registry import EmbeddedRegistry, Load, Member
from fogline.core.control.topology import TopologyPublisher, TopologySnapshot
from fogline.core.escalation.catalog import Catalog, CatalogEntry, Placement
from fogline.core.escalation.hardness import HardnessRule
from fogline.core.lifecycle.plan import InstallState, ModelPlan, ModelSyncHandler, RolloutReport
from fogline.core.security.identity import Identity, IdentityError
from fogline.core.security.members import MemberRules
from fogline.errors import FoglineError, InternalError, InvalidInputError, UnavailableError

T = TypeVar("T")

log = logging.getLogger(__name__)

CONTROL_MAX_MESSAGE_BYTES = 1024 * 1024
MAX_SYNC_ITEMS = 1024
"""Installs and rollout reports one model sync may carry."""


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


def _requested_identity(service: str, member_id: str, region: str) -> Identity:
    try:
        return Identity(service=service, id=member_id, region=region)
    except IdentityError as exc:
        raise InvalidInputError(f"cannot enrol: {exc}") from None


def _caller_key(identity: Identity | None, context: grpc.aio.ServicerContext) -> str:
    """Whom a register rate limit counts: the certificate's identity, else the peer's host."""
    if identity is not None:
        return identity.uri
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0]


class ControlServicer(cpb_grpc.ControlServicer):
    """Registers children of a master into its embedded registry, whose rules decide who may join;
    on the cloud master, also streams the topology to edge masters.

    On a TLS control plane every call names its caller in its client certificate, and ``rules``
    (:class:`~fogline.core.security.members.MemberRules`) hold each member to that identity.
    ``enroller`` signs certificates for nodes with join tokens (None: this master does not).
    """

    def __init__(self, registry: EmbeddedRegistry, *, topology: TopologyPublisher | None = None,
                 rules: MemberRules | None = None, enroller: Enroller | None = None,
                 models: ModelSyncHandler | None = None, artefacts: BlobSource | None = None,
                 on_sent: Callable[[int], None] | None = None) -> None:
        self.registry = registry
        self.topology = topology
        self.rules = rules or MemberRules(secure=False)
        self.enroller = enroller
        self.models = models
        self.artefacts = artefacts
        self._on_sent = on_sent

    async def Register(self, request: cpb.RegisterRequest,
                       context: grpc.aio.ServicerContext) -> cpb.RegisterResponse:
        """Admit the member into the registry: PERMISSION_DENIED unless it is the certificate's,
        INVALID_ARGUMENT or RESOURCE_EXHAUSTED if it may not join."""
        try:
            identity = peer_identity(context)
            m = request.member
            self.rules.check_register(identity, service=m.service, member_id=m.id, region=m.region,
                                      holder=self._holder(m.id))
            self.registry.admit(member_from_proto(m), caller=_caller_key(identity, context))
        except FoglineError as exc:
            await abort(context, exc)
        return cpb.RegisterResponse(heartbeat_interval_ms=int(self.registry.heartbeat_interval_s * 1000),
                                    ttl_ms=int(self.registry.ttl_s * 1000))

    def _holder(self, member_id: str) -> tuple[str, str] | None:
        """(service, region) of the member registered as ``member_id``; None if there is none."""
        state = self.registry.get(member_id)
        return (state.member.service, state.member.region) if state else None

    def _check_self(self, context: grpc.aio.ServicerContext, member_id: str) -> None:
        self.rules.check_self(peer_identity(context), member_id=member_id, registered=self._holder(member_id))

    async def Heartbeat(self, request: cpb.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> cpb.HeartbeatResponse:
        """Record the member's load and models; ``known`` is False if it must register again."""
        try:
            self._check_self(context, request.id)
            load = Load(in_flight=request.load.in_flight, queue_depth=request.load.queue_depth)
            known = self.registry.heartbeat(request.id, load, request.models or None)
        except FoglineError as exc:
            await abort(context, exc)
        return cpb.HeartbeatResponse(known=known)

    async def SyncModels(self, request: cpb.SyncModelsRequest,
                         context: grpc.aio.ServicerContext) -> cpb.SyncModelsResponse:
        """Record the member's loaded versions, installs and reports; answer with its model plans."""
        try:
            self._check_self(context, request.id)
            if len(request.installs) > MAX_SYNC_ITEMS or len(request.rollouts) > MAX_SYNC_ITEMS:
                raise InvalidInputError(f"at most {MAX_SYNC_ITEMS} installs and rollout reports per model sync")
            if not self.registry.set_versions(request.id, ((v.name, v.version) for v in request.loaded)):
                return cpb.SyncModelsResponse(known=False)
            state = self.registry.get(request.id)
            plans: list[ModelPlan] = []
            if self.models is not None and state is not None:
                plans = self.models.sync(state.member, [install_from_proto(i) for i in request.installs],
                                         [report_from_proto(r) for r in request.rollouts])
        except FoglineError as exc:
            await abort(context, exc)
        return cpb.SyncModelsResponse(known=True, plans=[plan_to_proto(p) for p in plans])

    async def FetchArtefact(self, request: cpb.FetchArtefactRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[cpb.ArtefactChunk]:
        """Stream an artefact to a member (only members: the control port requires a fleet certificate)."""
        if self.artefacts is None:
            await abort(context, UnavailableError("this master holds no model artefacts: the cloud master needs "
                                                  "--model-store, an edge master a cache"))
            return
        if self.rules.secure and peer_identity(context) is None:
            await abort(context, self.rules.unauthenticated())
        async for chunk in serve_artefact(self.artefacts, request, context, on_sent=self._on_sent):
            yield chunk

    async def Deregister(self, request: cpb.DeregisterRequest,
                         context: grpc.aio.ServicerContext) -> cpb.DeregisterResponse:
        """Drop the member (nothing happens for an unknown one)."""
        try:
            self._check_self(context, request.id)
        except FoglineError as exc:
            await abort(context, exc)
        self.registry.deregister(request.id)
        return cpb.DeregisterResponse()

    async def WatchTopology(self, request: cpb.WatchTopologyRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[cpb.Topology]:
        """Stream the cloud master's topology to an edge master; UNIMPLEMENTED on an edge master."""
        if self.topology is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "only the cloud master serves a topology; point --cloud at its control address")
            return
        try:
            self.rules.check_watcher(peer_identity(context), region=request.region)
        except FoglineError as exc:
            await abort(context, exc)
        log.info("edge master %s (region %s) follows the topology", request.watcher_id[:80], request.region[:80])
        async for snapshot in self.topology.updates():
            yield topology_to_proto(snapshot)

    def _enroller(self) -> Enroller:
        if self.enroller is None:
            raise UnavailableError("this master does not enrol nodes: the one holding the fleet CA (--ca-dir) "
                                   "does, and an edge master with --cloud forwards to it")
        return self.enroller

    async def Enrol(self, request: cpb.EnrolRequest, context: grpc.aio.ServicerContext) -> cpb.Certificate:
        """Sign a certificate for a node with a join token (or for a device its edge master forwards)."""
        try:
            enroller = self._enroller()
            target = _requested_identity(request.service, request.id, request.region)
            self.rules.check_forwarding(peer_identity(context), target)
            if self.registry.get(target.id) is not None:
                raise InvalidInputError(f"id {target.id!r} is a member already: choose another id for a new node")
            issued = await enroller.enrol(request.token, target, request.csr)
        except FoglineError as exc:
            await abort(context, exc)
        return cpb.Certificate(certificate=issued.certificate, ca=issued.ca)

    async def Renew(self, request: cpb.RenewRequest, context: grpc.aio.ServicerContext) -> cpb.Certificate:
        """Sign a fresh certificate for the caller (or for the device its edge master names)."""
        try:
            enroller = self._enroller()
            caller = peer_identity(context)
            if caller is None:
                raise self.rules.unauthenticated()
            target = caller
            if request.on_behalf_of:
                try:
                    target = Identity.parse(request.on_behalf_of)
                except IdentityError as exc:
                    raise InvalidInputError(f"on_behalf_of: {exc}") from None
                self.rules.check_forwarding(caller, target)
            issued = await enroller.renew(target, request.csr)
        except FoglineError as exc:
            await abort(context, exc)
        return cpb.Certificate(certificate=issued.certificate, ca=issued.ca)


class GrpcControlClient:
    """A child's end of the control plane (implements ``fogline.core.control.membership.ControlPlane``).

    With ``material`` it speaks mTLS, checking that the master's certificate carries ``server_name``
    (e.g. ``region-a.edge.fogline``: an edge master of this region); when the certificate files
    change, the next call opens a fresh channel with the new certificate.
    """

    def __init__(self, address: str, *, timeout_s: float = 2.0, material: TlsMaterial | None = None,
                 server_name: str | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.material = material
        self.server_name = server_name
        self._open()

    def _open(self) -> None:
        self._generation = self.material.generation if self.material else 0
        self._channel = open_channel(self.address, self.material, server_name=self.server_name,
                                     options=channel_options(CONTROL_MAX_MESSAGE_BYTES))
        self._stub = cpb_grpc.ControlStub(self._channel)

    async def _fresh(self) -> None:
        if self.material is not None and self.material.generation != self._generation:
            old = self._channel
            self._open()
            await old.close(grace=self.timeout_s)

    async def _call(self, method: str, request: object) -> Any:
        """One unary call of the Control service; a failed one raises the FoglineError of its status."""
        await self._fresh()
        rpc: Callable[..., Awaitable[T]] = getattr(self._stub, method)
        try:
            return await rpc(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, peer=f"master {self.address}") from None

    async def enrol(self, token: str, identity: Identity, csr: bytes) -> Issued:
        """Forward a node's enrolment (an edge master to the cloud master)."""
        reply = await self._call("Enrol", cpb.EnrolRequest(
            token=token, service=identity.service, id=identity.id, region=identity.region, csr=csr))
        return Issued(reply.certificate, reply.ca)

    async def renew(self, csr: bytes, on_behalf_of: Identity | None = None) -> Issued:
        """A fresh certificate for this process (or, forwarded, for ``on_behalf_of``)."""
        reply = await self._call("Renew", cpb.RenewRequest(
            csr=csr, on_behalf_of=on_behalf_of.uri if on_behalf_of else ""))
        return Issued(reply.certificate, reply.ca)

    async def register(self, member: Member) -> tuple[float, float]:
        """Join the master; its (heartbeat interval, ttl) in seconds."""
        reply = await self._call("Register", cpb.RegisterRequest(member=member_to_proto(member)))
        return reply.heartbeat_interval_ms / 1000, reply.ttl_ms / 1000

    async def heartbeat(self, member_id: str, load: Load, models: list[str]) -> bool:
        """Report load and models; False if the master no longer knows ``member_id``."""
        request = cpb.HeartbeatRequest(id=member_id, load=cpb.Load(in_flight=load.in_flight,
                                                                   queue_depth=load.queue_depth),
                                       models=models)
        reply = await self._call("Heartbeat", request)
        return bool(reply.known)

    async def sync_models(self, member_id: str, loaded: list[tuple[str, str]], installs: list[InstallState],
                          reports: list[RolloutReport]) -> list[ModelPlan] | None:
        """One model sync (implements ``fogline.servers.lifecycle.ModelControl``): the plans to follow,
        None if the master no longer knows ``member_id``."""
        reply = await self._call("SyncModels", cpb.SyncModelsRequest(
            id=member_id, loaded=[cpb.ModelVersion(name=n, version=v) for n, v in loaded],
            installs=[install_to_proto(i) for i in installs], rollouts=[report_to_proto(r) for r in reports]))
        if not reply.known:
            return None
        return [plan_from_proto(p) for p in reply.plans]

    def artefact_stream(self) -> OpenStream:
        """Artefacts from this master by digest (``fogline.adapters.grpc.artefacts.ArtefactFetcher``)."""
        async def open_stream(digest: str, offset: int) -> AsyncIterator[tuple[bytes, int]]:
            await self._fresh()
            async for chunk in stub_stream(self._stub, timeout_s=300.0, peer=f"master {self.address}")(digest, offset):
                yield chunk
        return open_stream

    async def deregister(self, member_id: str) -> None:
        """Leave the master."""
        await self._call("Deregister", cpb.DeregisterRequest(id=member_id))

    async def watch(self, watcher_id: str, region: str) -> AsyncIterator[TopologySnapshot]:
        """The cloud master's topology stream (implements ``fogline.core.control.topology.TopologySource``)."""
        await self._fresh()
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


async def enrol_at(address: str, ca: bytes, token: str, identity: Identity, csr: bytes, *,
                   server_name: str | None = None, timeout_s: float = 5.0) -> Issued:
    """Enrol at a master's enrolment port with a join token, before this process has a certificate:
    the master is checked against the fleet CA ``ca``, and no client certificate is sent."""
    channel = server_tls_channel(address, ca, server_name=server_name,
                                 options=channel_options(CONTROL_MAX_MESSAGE_BYTES))
    try:
        reply = await cpb_grpc.ControlStub(channel).Enrol(cpb.EnrolRequest(
            token=token, service=identity.service, id=identity.id, region=identity.region, csr=csr), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, peer=f"master {address}") from None
    finally:
        await channel.close()
    return Issued(reply.certificate, reply.ca)


def add_control(servicer: ControlServicer) -> Callable[[grpc.aio.Server], None]:
    """A registrar for ``create_server``."""
    return lambda server: cpb_grpc.add_ControlServicer_to_server(servicer, server)
