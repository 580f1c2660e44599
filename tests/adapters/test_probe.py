"""HealthProber against real grpc.aio servers with grpc.health.v1 on 127.0.0.1: a member is routed to
only once its address answers SERVING, and one at a dead port never is, and its probe ends with it."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fogline.adapters.grpc.probe import HealthProber
from fogline.adapters.grpc.server import set_serving
from fogline.core.control.registry import EmbeddedRegistry, Member
from tests.polling import until


class CountingHealth(health.aio.HealthServicer):
    """The standard health servicer, counting the checks it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
                    ) -> health_pb2.HealthCheckResponse:
        self.checks += 1
        return await super().Check(request, context)


@dataclass
class Channels:
    """The prober's channel factory: plaintext, remembering what it opened."""

    opened: list[grpc.aio.Channel] = field(default_factory=list)

    def __call__(self, member: Member) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(member.address)
        self.opened.append(channel)
        return channel

    def all_closed(self) -> bool:
        return all(c.get_state() is grpc.ChannelConnectivity.SHUTDOWN for c in self.opened)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, CountingHealth]]:
    """A gRPC server with only a health service, NOT_SERVING; its address and servicer."""
    srv = grpc.aio.server()
    servicer = CountingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    await set_serving(servicer, False)
    yield f"127.0.0.1:{port}", servicer
    await srv.stop(None)


def dead_address() -> str:
    """An address where nothing listens: a port bound a moment ago and closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def device(member_id: str, address: str) -> Member:
    return Member(id=member_id, service="device", address=address, models=frozenset({"m"}))


def prober_for(registry: EmbeddedRegistry, channels: Channels, **settings: float) -> HealthProber:
    return HealthProber(registry, channels, timeout_s=1.0, initial_backoff_s=0.01, max_backoff_s=0.05,
                        rng=random.Random(0), **settings)  # type: ignore[arg-type]


async def test_a_member_is_marked_checked_only_once_its_address_answers_serving(
        server: tuple[str, CountingHealth]) -> None:
    address, servicer = server
    registry = EmbeddedRegistry(require_check=True)
    routed: list[list[str]] = []
    registry.watch(lambda: routed.append([s.member.id for s in registry.members()]))
    channels = Channels()
    prober = prober_for(registry, channels)
    prober.start()
    try:
        registry.admit(device("d1", address))
        await until(lambda: servicer.checks >= 3, 10, "three checks answered NOT_SERVING")
        assert registry.members() == [] and prober.probing == {"d1"}
        await set_serving(servicer, True)
        await until(lambda: registry.members(), 10, "d1 to pass its check")
        assert routed[-1] == ["d1"] and all(ids == [] for ids in routed[:-1])
        await until(lambda: not prober.probing, 10, "the probe to end")
        checks = servicer.checks
        registry.admit(device("d1", address))  # unchanged: stays checked, nothing probed
        assert registry.unchecked() == [] and servicer.checks == checks
    finally:
        await prober.stop()
    assert len(channels.opened) == servicer.checks  # a fresh channel per try, each closed
    assert channels.all_closed()


async def test_a_member_at_a_dead_port_stays_unchecked_and_its_probe_ends_when_it_leaves(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = EmbeddedRegistry(require_check=True)
    channels = Channels()
    prober = prober_for(registry, channels, warn_after_failures=2)
    caplog.set_level(logging.DEBUG, logger="fogline.adapters.grpc.probe")
    registry.admit(device("ghost", dead_address()))
    prober.start()  # a member unchecked before the start is probed too
    try:
        await until(lambda: len(channels.opened) >= 6, 10, "six failed checks")
        assert registry.members() == [] and prober.probing == {"ghost"}
        registry.deregister("ghost")
        await until(lambda: not prober.probing, 10, "the probe to stop")
        tries = len(channels.opened)
        registry.admit(device("other", dead_address()))
        await until(lambda: len(channels.opened) >= tries + 2, 10, "the next member's checks")
    finally:
        await prober.stop()
    assert prober.probing == frozenset() and channels.all_closed()
    records = [r for r in caplog.records if r.name == "fogline.adapters.grpc.probe"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert [w.split(" at ")[0] for w in warnings] == ["device ghost", "device other"][:len(warnings)]
    assert warnings and "fails its health check (UNAVAILABLE" in warnings[0]
    assert not [r for r in records if r.levelno == logging.INFO]  # nobody passed; no try is logged at INFO


async def test_a_probe_follows_a_member_that_moves_to_a_live_address(server: tuple[str, CountingHealth]) -> None:
    address, servicer = server
    await set_serving(servicer, True)
    registry = EmbeddedRegistry(require_check=True)
    channels = Channels()
    prober = prober_for(registry, channels)
    prober.start()
    try:
        registry.admit(device("d1", dead_address()))
        await until(lambda: len(channels.opened) >= 2, 10, "checks of the dead address")
        registry.admit(device("d1", address))
        await until(lambda: registry.members(), 10, "d1 at its new address to pass")
        assert registry.get("d1").member.address == address  # type: ignore[union-attr]
        await until(lambda: not prober.probing, 10, "the probe to end")
    finally:
        await prober.stop()


async def test_a_factory_that_fails_costs_a_try_not_the_prober(server: tuple[str, CountingHealth]) -> None:
    address, servicer = server
    await set_serving(servicer, True)
    registry = EmbeddedRegistry(require_check=True)
    calls = []

    def flaky(member: Member) -> grpc.aio.Channel:
        calls.append(member.id)
        if len(calls) < 3:
            raise ValueError("TLS material not loaded yet")
        return grpc.aio.insecure_channel(member.address)

    prober = HealthProber(registry, flaky, initial_backoff_s=0.01, max_backoff_s=0.02)
    prober.start()
    try:
        registry.admit(device("d1", address))
        await until(lambda: registry.members(), 10, "d1 to pass on the third try")
    finally:
        await prober.stop()
    assert len(calls) == 3
