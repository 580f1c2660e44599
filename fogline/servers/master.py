"""What every master is made of, wired once: an embedded registry of its children served on a
control server of its own, a pool of connections to the members it forwards to (kept in step with
the registry), a V2 server in front, REST status, expiry of silent members, and draining.

The edge master (children: device nodes) and the cloud master (children: edge masters and GPU
workers) subclass :class:`Master` and add only their routing, identity and status.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogline.adapters.grpc.artefacts import BlobSource
from fogline.adapters.grpc.control import CONTROL_MAX_MESSAGE_BYTES, ControlServicer, add_control
from fogline.adapters.grpc.probe import HealthProber
from fogline.adapters.grpc.server import bind, create_server, set_serving
from fogline.adapters.grpc.upstream import GrpcUpstream
from fogline.adapters.grpc.v2 import V2Backend, v2_handler
from fogline.adapters.http import start_http
from fogline.adapters.http.peers import PeerReader
from fogline.adapters.metrics import Metrics
from fogline.adapters.tls.credentials import open_channel, server_credentials
from fogline.adapters.tls.enrolment import DEFAULT_ENROLLED_TTL_S, CaEnroller, Enroller, Issued
from fogline.adapters.tls.http import client_ssl_context
from fogline.adapters.tls.material import ClientAuth, TlsMaterial
from fogline.core.control.limits import ControlLimits
from fogline.core.control.registry import EmbeddedRegistry, MemberState
from fogline.core.lifecycle.plan import ModelSyncHandler
from fogline.core.routing.breaker import BreakerSettings, BreakerState, CircuitBreaker
from fogline.core.routing.dispatch import DispatchSettings
from fogline.core.routing.pool import EndpointPool
from fogline.core.security.identity import Identity
from fogline.core.security.members import MemberRules
from fogline.servers.dashboard import Dashboard, DashboardSettings, FleetView, Peer
from fogline.servers.security import ProcessSecurity, member_identity, prepare
from fogline.servers.settings import ProcessSettings

_STATE_VALUE = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


@dataclass(kw_only=True)
class MasterSettings(ProcessSettings):
    """What the edge and cloud masters are both configured with."""

    control_port: int = 0
    """fogline.control.v1 port (its children); a server of its own so inference cannot starve it."""
    heartbeat_interval_s: float = 1.0
    """How often children report their load and models."""
    member_ttl_s: float = 3.0
    """A child silent this long is dropped from routing."""
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    """Retries, attempt timeouts and deadlines of requests forwarded to children."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    """When the circuit of an upstream endpoint opens, for how long, and how it closes."""
    ca_dir: Path | None = None
    """The fleet CA (``fogline certs init``): this master then signs the certificates of nodes that
    enrol with join tokens, and renewals. Keep it on one master (the cloud master)."""
    enrol_port: int = 0
    """Port where nodes with a join token and no certificate yet enrol (server TLS only); served with
    TLS when this master enrols (``ca_dir``) or forwards enrolments (an edge master with a cloud)."""
    enrolled_cert_ttl_s: float = DEFAULT_ENROLLED_TTL_S
    """Lifetime of certificates signed for enrolments and renewals; members renew at 2/3 of it."""
    admin_port: int = 0
    """Admin API (fleet-changing operations), served apart from inference; started when an admin
    credential is configured (``admin_token_file`` or TLS for admin certificates)."""
    admin_token_file: Path | None = None
    """File holding the admin bearer token (re-read when it changes); never logged."""
    control_limits: ControlLimits = field(default_factory=ControlLimits)
    """What each child may claim (models, names, members) and how often a caller may register."""
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    """How the live dashboard (``/ui/``, ``/v1/dashboard``) samples this master's part of the fleet."""


class Master:
    """The shared core of the edge and cloud masters. Subclasses provide ``readiness()`` and
    ``status()`` (the REST status source) and call :meth:`_serve` and :meth:`_stop_serving`.

    ``children`` are the services that may register here, ``region`` the one they must serve ("": any);
    members of ``pooled_service`` are the ones it forwards V2 requests to.
    """

    def __init__(self, settings: MasterSettings, *, tier: str, children: frozenset[str], pooled_service: str,
                 connect: Callable[[MemberState], GrpcUpstream], region: str = "") -> None:
        self.metrics = Metrics(tier, is_member=self._is_member)
        # NOTE: a member takes traffic only once a health check of it passed (the prober), so that members
        # that never answer neither get requests nor count toward the pool's panic threshold.
        self.registry = EmbeddedRegistry(ttl_s=settings.member_ttl_s,
                                         heartbeat_interval_s=settings.heartbeat_interval_s,
                                         services=children, region=region, limits=settings.control_limits,
                                         require_check=True)
        self.prober = HealthProber(self.registry, lambda m: open_channel(
            m.address, self.material, peer=member_identity(m.service, m.id, m.region)))
        self.pool: EndpointPool[GrpcUpstream] = EndpointPool(
            connect, self._disconnect, make_breaker=lambda: CircuitBreaker(settings.breaker))
        self.registry.watch(lambda: self.pool.sync(self.registry.members(pooled_service)))
        self._pools: list[EndpointPool[GrpcUpstream]] = [self.pool]  # closed on drain
        self.metrics.add_counters(self._breaker_counters)
        self.metrics.add_gauges(self._breaker_states)
        self.endpoints: dict[str, Any] = {}
        self._master_settings = settings
        self._closing: set[asyncio.Task[None]] = set()
        self.security: ProcessSecurity | None = None
        self.enroller: Enroller | None = None
        self._admin: Any = None
        self.dashboard: Dashboard | None = None
        self._peer_context: ssl.SSLContext | None = None

    def identity(self) -> Identity:
        """What this master's certificate names (subclasses)."""
        raise NotImplementedError

    parent_server_name: str | None = None
    """The name the certificate of this master's own parent carries (the cloud master's, for an edge)."""

    async def _secure(self) -> None:
        """Read (or enrol for) this master's certificate; nothing without TLS settings. Call first."""
        self.security = await prepare(self._master_settings, self.identity(),
                                      parent_server_name=self.parent_server_name)
        if self.security is not None:
            self.security.material.on_change(self._reconnect)

    @property
    def material(self) -> TlsMaterial | None:
        """The TLS material of this process (None in plaintext)."""
        return self.security.material if self.security else None

    def upstream_tls(self, state: MemberState) -> dict[str, Any]:
        """The keyword arguments of an upstream to ``state``'s member: mTLS checking that the server
        is that member, when this process runs TLS."""
        m = state.member
        return {"material": self.material, "peer": member_identity(m.service, m.id, m.region)}

    def _reconnect(self) -> None:
        # NOTE: a rotated certificate: new channels present it; the old ones finish their calls first.
        for pool in self._pools:
            pool.reconnect()

    def _disconnect(self, upstream: GrpcUpstream) -> None:
        # A departing member (deregistered while draining) finishes the requests it has: let them
        # complete rather than cancel them; whatever is left after the grace fails over elsewhere.
        task = asyncio.ensure_future(upstream.close(self._master_settings.drain_grace_s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        # NOTE: once the pool's sync is over: a member that only moved address is back in it by then.
        task.get_loop().call_soon(self.metrics.prune_departed)

    def _is_member(self, endpoint_id: str) -> bool:
        """Whether ``endpoint_id`` is in one of the pools; the series of one that is not are removed."""
        return any(endpoint_id in pool.endpoints for pool in self._pools)

    def _breaker_counters(self) -> list[tuple[str, str, dict[str, str], float]]:
        """Breaker trips and rejections per upstream endpoint, and its state (0 closed, 1 half-open, 2 open)."""
        samples = []
        for pool in self._pools:
            for endpoint in pool.endpoints.values():
                breaker, labels = endpoint.breaker, {"endpoint": endpoint.id}
                samples += [("fogline_breaker_trips", "Times the endpoint's circuit opened", labels,
                             float(breaker.trips)),
                            ("fogline_breaker_rejections", "Calls the endpoint's open circuit refused", labels,
                             float(breaker.rejections))]
        return samples

    def _breaker_states(self) -> list[tuple[str, str, dict[str, str], float]]:
        return [("fogline_breaker_state", "Circuit of the upstream endpoint: 0 closed, 1 half-open, 2 open",
                 {"endpoint": e.id}, _STATE_VALUE[e.breaker.state])
                for pool in self._pools for e in pool.endpoints.values()]

    def _enroller(self, forward: Enroller | None) -> Enroller | None:
        """Who signs enrolments here: the fleet CA with ``ca_dir``, else ``forward``; none in plaintext."""
        s = self._master_settings
        if self.security is None:
            return None
        return CaEnroller(s.ca_dir, ttl_s=s.enrolled_cert_ttl_s) if s.ca_dir else forward

    async def _serve(self, backend: V2Backend, *, topology: Any = None, forward_enrolment: Enroller | None = None,
                     routes: Mapping[str, Callable[[], Awaitable[Any]]] | None = None,
                     models: ModelSyncHandler | None = None, artefacts: BlobSource | None = None,
                     on_sent: Callable[[int], None] | None = None) -> dict[str, str]:
        """Start the V2, control (and enrolment), REST and admin servers; their advertised addresses.
        ``models`` answers the children's model syncs, ``artefacts`` their artefact fetches."""
        s = self._master_settings
        self.enroller = enroller = self._enroller(forward_enrolment)
        control = ControlServicer(self.registry, topology=topology, rules=MemberRules(secure=self.security is not None),
                                  enroller=enroller, models=models, artefacts=artefacts, on_sent=on_sent)
        self._server, self._health = create_server(v2_handler(backend, self.metrics, api_keys=s.load_api_keys()),
                                                   max_message_bytes=s.max_message_bytes)
        self._control, _ = create_server(registrars=[add_control(control)],
                                         max_message_bytes=CONTROL_MAX_MESSAGE_BYTES)
        security, client_auth = self.security, s.tls.client_auth if s.tls else ClientAuth.NONE
        creds = (lambda auth: server_credentials(security.material, auth)) if security else (lambda auth: None)
        ports = {"grpc": bind(self._server, s.host, s.grpc_port, credentials=creds(client_auth)),
                 "control": bind(self._control, s.host, s.control_port, flag="--control-port",
                                 credentials=creds(ClientAuth.REQUIRE))}
        if enroller is not None:  # NOTE: the same control service; without a certificate, Enrol is all it allows
            ports["enrol"] = bind(self._control, s.host, s.enrol_port, flag="--enrol-port",
                                  credentials=creds(ClientAuth.NONE))
        tls = (security.material, ClientAuth.OPTIONAL) if security else None
        self.dashboard = self._dashboard()
        routes = {**(routes or {}), **self.dashboard.status_routes()}
        self._http, ports["http"] = await start_http(self, self.metrics, s.host, s.http_port, routes=routes,  # type: ignore[arg-type]
                                                     tls=tls, ui=True)
        admin_port = await self._start_admin()
        if admin_port is not None:
            ports["admin"] = admin_port
        await self._control.start()  # only once every port is bound: a taken one leaves nothing running
        await self._server.start()
        await set_serving(self._health, True)
        self.prober.start()
        self.dashboard.start()
        self._expiry = asyncio.create_task(self._expire_loop(), name="expire")
        advertise = s.advertise_host or s.host
        return {name: f"{advertise}:{port}" for name, port in ports.items()}

    async def _start_admin(self) -> int | None:
        """Serve the admin API when an admin credential is configured; its port (None: not served)."""
        from fogline.adapters.http.admin import AdminAuth, start_admin
        from fogline.servers.admin import admin_routes

        s = self._master_settings
        if s.admin_token_file is None and self.security is None:
            return None
        auth = AdminAuth(s.admin_token_file, self.material)
        routes = {**admin_routes(self.registry, self.enroller), **self.extra_admin_routes()}
        self._admin, port = await start_admin(routes, host=s.host, port=s.admin_port, auth=auth, tls=self.material)
        return port

    def _dashboard(self) -> Dashboard:
        identity = self.identity()
        reader = PeerReader(timeout_s=self._master_settings.dashboard.peer_timeout_s,
                            ssl=self.peer_ssl())
        return Dashboard(self.metrics, self.dashboard_view, scope=self.metrics.tier, id=identity.id,
                         region=identity.region or None, settings=self._master_settings.dashboard, reader=reader)

    def dashboard_view(self) -> FleetView:
        """What the dashboard shows of the fleet now (subclasses)."""
        raise NotImplementedError

    def peer_ssl(self) -> ssl.SSLContext | None:
        """The client TLS with which members' REST pages are read (one context: it follows the certificate);
        None in plaintext."""
        if self.material is not None and self._peer_context is None:
            self._peer_context = client_ssl_context(self.material)
        return self._peer_context

    def peer(self, state: MemberState, tier: str) -> Peer:
        """How the dashboard reads ``state``'s member's pages: over TLS, checking its identity."""
        m = state.member
        identity = member_identity(m.service, m.id, m.region) if self.material else None
        return Peer(m.id, tier, m.http_address, identity.dns_name if identity else None)

    def extra_admin_routes(self) -> dict[tuple[str, str], Any]:
        """Admin routes a subclass adds to the shared ones, by (method, path) (none here)."""
        return {}

    def self_renewer(self) -> _LocalRenewer | None:
        """How the master holding the fleet CA renews its own certificate: with that CA."""
        if not isinstance(self.enroller, CaEnroller) or self.security is None:
            return None
        return _LocalRenewer(self.enroller, self.security.identity)


    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self._master_settings.member_ttl_s / 4)
            self.registry.expire()

    async def _stop_serving(self) -> None:
        """Refuse new calls, finish running ones within the grace period, then close everything."""
        await set_serving(self._health, False)
        await self._server.stop(self._master_settings.drain_grace_s)
        self._expiry.cancel()
        await self._control.stop(1.0)
        await self._http.cleanup()
        if self.dashboard is not None:
            await self.dashboard.stop()
        await self.prober.stop()
        if self._admin is not None:
            await self._admin.cleanup()
        if self.security is not None:
            await self.security.stop()
        for pool in self._pools:
            pool.close()
        await asyncio.gather(*self._closing, return_exceptions=True)


@dataclass
class _LocalRenewer:
    """Renews through an enroller in this process."""

    enroller: CaEnroller
    identity: Identity

    async def renew(self, csr: bytes) -> Issued:
        return await self.enroller.renew(self.identity, csr)
