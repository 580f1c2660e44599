"""What every master is made of, wired once: an embedded registry of its children served on a
control server of its own, a pool of connections to the members it forwards to (kept in step with
the registry), a V2 server in front, REST status, expiry of silent members, and draining.

The edge master (children: device nodes) and the cloud master (children: edge masters and GPU
workers) subclass :class:`Master` and add only their routing, identity and status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fogline.adapters.grpc.control import CONTROL_MAX_MESSAGE_BYTES, ControlServicer, add_control
from fogline.adapters.grpc.server import bind, create_server, set_serving
from fogline.adapters.grpc.upstream import GrpcUpstream
from fogline.adapters.grpc.v2 import V2Backend, v2_handler
from fogline.adapters.http import start_http
from fogline.adapters.metrics import Metrics
from fogline.core.control.registry import EmbeddedRegistry, MemberState
from fogline.core.routing.breaker import BreakerSettings, BreakerState, CircuitBreaker
from fogline.core.routing.dispatch import DispatchSettings
from fogline.core.routing.pool import EndpointPool
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


class Master:
    """The shared core of the edge and cloud masters. Subclasses provide ``readiness()`` and
    ``status()`` (the REST status source) and call :meth:`_serve` and :meth:`_stop_serving`.

    ``children`` are the services that may register here, ``region`` the one they must serve ("": any);
    members of ``pooled_service`` are the ones it forwards V2 requests to.
    """

    def __init__(self, settings: MasterSettings, *, tier: str, children: frozenset[str], pooled_service: str,
                 connect: Callable[[MemberState], GrpcUpstream], region: str = "") -> None:
        self.metrics = Metrics(tier, is_member=self._is_member)
        self.registry = EmbeddedRegistry(ttl_s=settings.member_ttl_s,
                                         heartbeat_interval_s=settings.heartbeat_interval_s,
                                         services=children, region=region)
        self.pool: EndpointPool[GrpcUpstream] = EndpointPool(
            connect, self._disconnect, make_breaker=lambda: CircuitBreaker(settings.breaker))
        self.registry.watch(lambda: self.pool.sync(self.registry.members(pooled_service)))
        self._pools: list[EndpointPool[GrpcUpstream]] = [self.pool]  # closed on drain
        self.metrics.add_counters(self._breaker_counters)
        self.metrics.add_gauges(self._breaker_states)
        self.endpoints: dict[str, Any] = {}
        self._master_settings = settings
        self._closing: set[asyncio.Task[None]] = set()

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

    async def _serve(self, backend: V2Backend, control: ControlServicer, *,
                     routes: Mapping[str, Callable[[], Awaitable[Any]]] | None = None) -> dict[str, str]:
        """Start the V2, control and REST servers; their advertised addresses."""
        s = self._master_settings
        self._server, self._health = create_server(v2_handler(backend, self.metrics),
                                                   max_message_bytes=s.max_message_bytes)
        self._control, _ = create_server(registrars=[add_control(control)],
                                         max_message_bytes=CONTROL_MAX_MESSAGE_BYTES)
        grpc_bound = bind(self._server, s.host, s.grpc_port)
        control_bound = bind(self._control, s.host, s.control_port, flag="--control-port")
        self._http, http_bound = await start_http(self, self.metrics, s.host, s.http_port, routes=routes)  # type: ignore[arg-type]
        await self._control.start()  # only once every port is bound: a taken one leaves nothing running
        await self._server.start()
        await set_serving(self._health, True)
        self._expiry = asyncio.create_task(self._expire_loop(), name="expire")
        advertise = s.advertise_host or s.host
        return {"grpc": f"{advertise}:{grpc_bound}", "control": f"{advertise}:{control_bound}",
                "http": f"{advertise}:{http_bound}"}

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
        for pool in self._pools:
            pool.close()
        await asyncio.gather(*self._closing, return_exceptions=True)
