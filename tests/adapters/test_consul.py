"""fogline.adapters.consul against a Consul agent: the stand-in, or a real ``consul agent -dev`` when installed.

Real gRPC servers with grpc.health.v1 stand for the members; the agent really probes them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc_health.v1 import health

from fogline.adapters.consul.client import ConsulSettings, member_from_health_entry, member_to_service, open_client
from fogline.adapters.consul.registration import ConsulControlPlane
from fogline.adapters.consul.watch import KVWatch, ServiceWatch
from fogline.adapters.grpc.server import bind, create_server, set_serving
from fogline.core.control.membership import MembershipLoop
from fogline.core.control.registry import Load, Member
from fogline.errors import InvalidInputError, UnavailableError
from tests.consul_fixture import ACL_TOKEN, ConsulAgent, consul_acl_agent, consul_agent, consul_standin
from tests.polling import until

__all__ = ["consul_acl_agent", "consul_agent", "consul_standin"]  # fixtures used by name

SECRET = "5ecre7-70ken-never-logged"
FAST = {"min_backoff_s": 0.01, "max_backoff_s": 0.05}


def closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def deadline_s(agent: ConsulAgent) -> float:
    return 10.0 if agent.real else 3.0


def member(mid: str, address: str, *, service: str = "edge", region: str = "r", models=("mlp",)) -> Member:
    return Member(id=mid, service=service, address=address, region=region, models=frozenset(models), capacity=4,
                  http_address="127.0.0.1:8080", meta={"zone": "z1"})


@pytest.fixture
async def grpc_health() -> AsyncIterator[tuple[str, health.aio.HealthServicer]]:
    """A gRPC server with grpc.health.v1, NOT_SERVING until the test says so; its address."""
    server, servicer = create_server()
    port = bind(server, "127.0.0.1", 0)
    await server.start()
    await set_serving(servicer, False)
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Control planes, watches and clients a test opens; closed (stopped) at teardown."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await (thing.stop() if isinstance(thing, ServiceWatch | KVWatch) else thing.close())


def control(agent: ConsulAgent, closing: list[Any], **options: Any) -> ConsulControlPlane:
    settings = options.pop("settings", None) or agent.settings()
    plane = ConsulControlPlane(settings, check_interval_s=agent.check_interval_s, check_timeout_s=1.0, **options)
    closing.append(plane)
    return plane


async def client(agent: ConsulAgent, closing: list[Any]) -> Any:
    consul_client = open_client(agent.settings())
    closing.append(consul_client)
    return consul_client


async def passing_ids(consul_client: Any, service: str = "fogline-edge") -> list[str]:
    _, entries = await consul_client.health.service(service, passing=True)
    return [e["Service"]["ID"] for e in entries]


# --- mapping and settings (no agent) -----------------------------------------------------------------------


def health_entry(registration: dict[str, Any]) -> dict[str, Any]:
    """What /v1/health/service returns for a registration."""
    return {"Node": {"Address": "10.0.0.1"}, "Checks": [],
            "Service": {"ID": registration["service_id"], "Service": registration["name"],
                        "Address": registration["address"], "Port": registration["port"],
                        "Tags": registration["tags"], "Meta": registration["meta"]}}


def test_a_member_round_trips_through_a_consul_service_even_with_a_long_model_list() -> None:
    models = {f"model-{i:04d}-with-a-longish-name" for i in range(400)}  # ~13 KiB of names
    m = Member(id="w1", service="worker", address="[::1]:50051", region="eu", models=frozenset(models),
               capacity=8, http_address="h:1", meta={"zone": "z1"})
    registration = member_to_service(m)
    assert registration["name"] == "fogline-worker" and registration["address"] == "::1"
    assert registration["tags"] == ["region:eu"] and registration["port"] == 50051
    meta = registration["meta"]
    assert len(meta) <= 64 and all(len(v) <= 512 for v in meta.values()) and "models_1" in meta
    assert member_from_health_entry(health_entry(registration)) == m
    short = Member(id="d", service="device", address="h:1")
    assert member_from_health_entry(health_entry(member_to_service(short))) == short


def test_a_member_that_cannot_go_into_consul_fails_clearly() -> None:
    ok = member("e1", "h:1")
    with pytest.raises(InvalidInputError, match="no comma"):
        member_to_service(Member(id="e1", service="edge", address="h:1", models=frozenset({"a,b"})))
    with pytest.raises(InvalidInputError, match="more than Consul's 64"):
        member_to_service(Member(id="e1", service="edge", address="h:1",
                                 models=frozenset(f"{i:0500d}" for i in range(64))))
    with pytest.raises(InvalidInputError, match="reserved"):
        member_to_service(Member(id="e1", service="edge", address="h:1", meta={"models_3": "x"}))
    with pytest.raises(InvalidInputError, match="expected one of"):
        member_to_service(Member(id="e1", service="gateway", address="h:1"))
    with pytest.raises(InvalidInputError, match="host:port"):
        member_to_service(Member(id="e1", service="edge", address="h"))
    assert member_to_service(ok)["meta"]["models"] == "mlp"


def test_settings_follow_consuls_environment_variables(tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{SECRET}\n")
    env = {"CONSUL_HTTP_ADDR": "https://consul.example:8501", "CONSUL_HTTP_TOKEN": "from-env",
           "CONSUL_HTTP_TOKEN_FILE": str(token_file), "CONSUL_CACERT": "ca.pem",
           "CONSUL_CLIENT_CERT": "c.pem", "CONSUL_CLIENT_KEY": "k.pem"}
    settings = ConsulSettings.from_env(env, datacenter="dc2")
    assert (settings.scheme, settings.host, settings.port) == ("https", "consul.example", 8501)
    assert settings.token == SECRET  # as in Consul's client, the token file wins
    assert (settings.verify, settings.client_cert, settings.client_key) == ("ca.pem", "c.pem", "k.pem")
    assert settings.datacenter == "dc2"
    assert SECRET not in repr(settings) and SECRET not in str(settings) and "token=<set>" in repr(settings)

    plain = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "10.0.0.5:8500", "CONSUL_HTTP_SSL": "true",
                                     "CONSUL_HTTP_SSL_VERIFY": "false"})
    assert (plain.url, plain.verify, plain.token) == ("https://10.0.0.5:8500", False, None)
    assert "token=<none>" in repr(plain)
    assert ConsulSettings.from_env({}).url == "http://127.0.0.1:8500"
    with pytest.raises(InvalidInputError, match="CONSUL_HTTP_TOKEN_FILE"):
        ConsulSettings.from_env({"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing")})
    with pytest.raises(InvalidInputError, match="host:port"):
        ConsulSettings(address="127.0.0.1:99999")


async def test_an_unreachable_consul_is_unavailable_and_the_token_never_shows(caplog, closing) -> None:
    settings = ConsulSettings(address=closed_address(), token=SECRET)
    plane = ConsulControlPlane(settings)
    closing.append(plane)
    with pytest.raises(UnavailableError, match="unreachable") as failure:
        await plane.register(member("e1", "127.0.0.1:1"))
    watch = ServiceWatch(settings, "edge", lambda members: None, **FAST)
    closing.append(watch)
    with caplog.at_level(logging.DEBUG):
        await watch.start()
        await until(lambda: watch.errors >= 3)
    assert not watch.connected and "unreachable" in watch.last_error
    assert watch.status()["connected"] is False and watch.status()["errors"] >= 3
    assert caplog.records and all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in str(failure.value) and SECRET not in watch.last_error


# --- registration ----------------------------------------------------------------------------------------------


async def test_a_member_is_passing_only_while_its_grpc_health_is_serving(consul_agent, grpc_health, closing) -> None:
    address, servicer = grpc_health
    consul_client = await client(consul_agent, closing)
    plane = control(consul_agent, closing)
    assert await plane.register(member("e1", address)) == (5.0, 60.0)

    async def critical() -> bool:
        _, entries = await consul_client.health.service("fogline-edge")
        return [c["Status"] for e in entries for c in e["Checks"] if c["ServiceID"] == "e1"] == ["critical"]

    await until(critical, deadline_s(consul_agent))
    assert await passing_ids(consul_client) == []
    await set_serving(servicer, True)
    await until(lambda: passing_ids(consul_client), deadline_s(consul_agent))
    await set_serving(servicer, False)
    await until(critical, deadline_s(consul_agent))
    assert await passing_ids(consul_client) == []
    assert "e1" in await consul_client.agent.services()  # critical, not gone: Consul reaps after a minute

    await plane.deregister("e1")
    assert "e1" not in await consul_client.agent.services()
    assert await plane.heartbeat("e1", Load(), ["mlp"]) is False


async def test_heartbeat_registers_a_changed_model_list(consul_agent, grpc_health, closing) -> None:
    consul_client = await client(consul_agent, closing)
    plane = control(consul_agent, closing)
    await plane.register(member("e1", grpc_health[0]))
    assert await plane.heartbeat("e1", Load(in_flight=3), ["mlp", "cnn"]) is True
    assert (await consul_client.agent.services())["e1"]["Meta"]["models"] == "cnn,mlp"


async def test_the_membership_loop_registers_again_when_the_agent_lost_the_member(consul_agent, grpc_health,
                                                                                  closing) -> None:
    consul_client = await client(consul_agent, closing)
    plane = control(consul_agent, closing, heartbeat_interval_s=0.05)
    loop = MembershipLoop(plane, lambda: member("e1", grpc_health[0]), Load, max_backoff_s=0.1)
    loop.start()
    await asyncio.wait_for(loop.registered.wait(), 5)
    if consul_agent.standin is not None:
        await consul_agent.standin.restart(fresh=True)  # a -dev agent restarts with nothing
    else:
        await consul_client.agent.service.deregister("e1")

    async def registered() -> bool:
        return "e1" in await consul_client.agent.services()

    await until(registered)
    await loop.leave()
    assert not await registered()


# --- watches -------------------------------------------------------------------------------------------------------


async def test_service_watch_reports_adds_and_removals_and_nothing_else(consul_agent, grpc_health, closing) -> None:
    address, servicer = grpc_health
    await set_serving(servicer, True)
    consul_client = await client(consul_agent, closing)
    plane = control(consul_agent, closing)
    changes: list[list[Member]] = []
    watch = ServiceWatch(consul_agent.settings(), "edge", changes.append, wait_s=0.2, **FAST)
    closing.append(watch)
    await watch.start()
    await asyncio.wait_for(watch.synced.wait(), 5)
    assert changes == [[]] and watch.connected and watch.last_index >= 1

    e1 = member("e1", address)
    started = time.monotonic()
    await plane.register(e1)
    await until(lambda: changes[-1] == [e1], deadline_s(consul_agent))
    assert consul_agent.real or time.monotonic() - started < 1.0

    # Wake-ups that change nothing: an unchanged re-registration, a critical instance flapping, timeouts.
    await plane.register(e1)
    await consul_client.agent.service.register("fogline-edge", service_id="flappy", port=1,
                                               check={"TTL": "60s", "CheckID": "flappy-ttl"})
    await consul_client.agent.check.ttl_warn("flappy-ttl")
    await consul_client.agent.check.ttl_fail("flappy-ttl")
    synced_at = watch.last_sync
    await until(lambda: watch.last_sync > synced_at + 0.5)
    assert changes == [[], [e1]]

    await plane.deregister("e1")
    await until(lambda: changes[-1] == [], deadline_s(consul_agent))
    assert len(changes) == 3


async def test_service_watch_of_one_region(consul_agent, grpc_health, closing) -> None:
    address, servicer = grpc_health
    await set_serving(servicer, True)
    plane = control(consul_agent, closing)
    here, there = member("a1", address, region="a"), member("b1", address, region="b")
    worker = member("w1", address, service="worker", region="a")
    for m in (here, there, worker):
        await plane.register(m)
    changes: list[list[Member]] = []
    watch = ServiceWatch(consul_agent.settings(), "edge", changes.append, region="a", **FAST)
    closing.append(watch)
    await watch.start()
    await until(lambda: changes and changes[-1] == [here], deadline_s(consul_agent))
    assert all(m in ([], [here]) for m in changes)


async def test_service_watch_keeps_the_last_members_while_consul_is_away(consul_standin, grpc_health,
                                                                         closing) -> None:
    address, servicer = grpc_health
    await set_serving(servicer, True)
    plane = control(consul_standin, closing)
    e1, e2 = member("e1", address), member("e2", address)
    await plane.register(e1)
    gate, waiting = asyncio.Event(), asyncio.Event()

    async def gated_sleep(seconds: float) -> None:  # holds the watch in its backoff until the test opens it
        waiting.set()
        await gate.wait()
        await asyncio.sleep(min(seconds, 0.01))

    changes: list[list[Member]] = []
    watch = ServiceWatch(consul_standin.settings(), "edge", changes.append, sleep=gated_sleep, **FAST)
    closing.append(watch)
    await watch.start()
    await until(lambda: changes and changes[-1] == [e1])
    seen = len(changes)

    await consul_standin.standin.stop()
    await asyncio.wait_for(waiting.wait(), 3)
    assert not watch.connected and "unreachable" in watch.last_error and watch.errors == 1
    assert watch.members == [e1] and len(changes) == seen

    await consul_standin.standin.start()  # same port, same state
    await plane.register(e2)  # joins while the watch is away
    gate.set()
    await until(lambda: changes[-1] == [e1, e2])
    assert changes[seen:] == [[e1, e2]]  # never an empty list for the outage
    assert watch.connected and watch.last_error is None


async def test_service_watch_follows_an_index_that_goes_backwards(consul_standin, grpc_health, closing) -> None:
    address, servicer = grpc_health
    await set_serving(servicer, True)
    plane = control(consul_standin, closing)
    changes: list[list[Member]] = []
    watch = ServiceWatch(consul_standin.settings(), "edge", changes.append, wait_s=0.2, **FAST)
    closing.append(watch)
    e1 = member("e1", address)
    for _ in range(5):
        await plane.register(replace_models(e1, "x"))
        await plane.register(e1)  # the index climbs
    await watch.start()
    await until(lambda: changes and changes[-1] == [e1])
    index_before = watch.last_index

    consul_standin.standin.reset()  # e.g. a server restored from a snapshot: the index goes back, no error
    await until(lambda: changes[-1] == [])  # what Consul now says: no member
    await plane.register(e1)
    await until(lambda: changes[-1] == [e1])
    assert 1 <= watch.last_index < index_before and watch.errors == 0


def replace_models(m: Member, *models: str) -> Member:
    return Member(id=m.id, service=m.service, address=m.address, region=m.region, models=frozenset(models),
                  capacity=m.capacity, http_address=m.http_address, meta=m.meta)


async def test_kv_watch_sees_puts_and_deletes(consul_agent, closing) -> None:
    consul_client = await client(consul_agent, closing)
    changes: list[dict[str, bytes]] = []
    watch = KVWatch(consul_agent.settings(), "fogline/policy/", changes.append, **FAST)
    closing.append(watch)
    await watch.start()
    await until(lambda: changes == [{}])
    await consul_client.kv.put("fogline/policy/edge-r", b'{"max_queue": 8}')
    await consul_client.kv.put("fogline/other", b"not watched")
    await until(lambda: changes[-1] == {"fogline/policy/edge-r": b'{"max_queue": 8}'})
    await consul_client.kv.delete("fogline/policy/edge-r")
    await until(lambda: changes[-1] == {})
    assert len(changes) == 3


# --- ACL --------------------------------------------------------------------------------------------------------


async def test_acl_token_works_and_its_absence_or_a_wrong_one_says_what_to_fix(consul_acl_agent, grpc_health,
                                                                               caplog, closing) -> None:
    address, servicer = grpc_health
    await set_serving(servicer, True)
    e1 = member("e1", address)
    await control(consul_acl_agent, closing).register(e1)
    changes: list[list[Member]] = []
    watch = ServiceWatch(consul_acl_agent.settings(), "edge", changes.append, **FAST)
    closing.append(watch)
    await watch.start()
    await until(lambda: changes and changes[-1] == [e1], deadline_s(consul_acl_agent))

    anonymous = control(consul_acl_agent, closing, settings=consul_acl_agent.settings(token=None))
    with pytest.raises(InvalidInputError, match=r"denied permission.*anonymous.*CONSUL_HTTP_TOKEN"):
        await anonymous.register(e1)

    wrong = consul_acl_agent.settings(token=SECRET)
    with pytest.raises(InvalidInputError, match="does not know the ACL token") as failure:
        await control(consul_acl_agent, closing, settings=wrong).register(e1)
    blind = ServiceWatch(wrong, "edge", lambda members: pytest.fail("no membership without a valid token"), **FAST)
    closing.append(blind)
    with caplog.at_level(logging.DEBUG):
        await blind.start()
        await until(lambda: blind.errors >= 2)
    assert not blind.connected and "does not know the ACL token" in blind.last_error
    for text in (str(failure.value), blind.last_error, *(r.getMessage() for r in caplog.records), repr(wrong)):
        assert SECRET not in text and ACL_TOKEN not in text


# --- TLS checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agent_has_a_fleet_certificate", [True, False], ids=["fleet-cert", "no-cert"])
async def test_a_tls_members_check_speaks_tls_to_its_own_name(tmp_path, closing,
                                                              agent_has_a_fleet_certificate: bool) -> None:
    """With TLS, the member asks Consul for a TLS check (GRPCUseTLS) naming its own certificate name
    (TLSServerName); an agent with the fleet CA and a fleet client certificate passes it, one without
    cannot even connect (the member requires client certificates)."""
    from fogline.adapters.tls.certs import FleetCA, write_identity
    from fogline.adapters.tls.credentials import server_credentials
    from fogline.adapters.tls.material import ClientAuth, TlsMaterial
    from fogline.core.security.identity import Identity
    from tests.consul_fixture import standin_agent

    ca = FleetCA.init(tmp_path / "ca")
    device = Identity(service="device", id="d1", region="r")
    cert, key = ca.issue(device, ttl_s=600)  # no IP SAN: only its name matches
    material = TlsMaterial(write_identity(tmp_path / "d1", cert, key or b"", ca.cert_pem))
    agent_cert, agent_key = ca.issue(Identity(service="client", id="consul-agent"), ttl_s=600)
    server, servicer = create_server()
    port = bind(server, "127.0.0.1", 0, credentials=server_credentials(material, ClientAuth.REQUIRE))
    await server.start()
    await set_serving(servicer, True)
    agent_tls = (ca.cert_pem, agent_cert, agent_key or b"") if agent_has_a_fleet_certificate else None
    try:
        async with standin_agent(agent_tls=agent_tls) as agent:
            plane = control(agent, closing, grpc_use_tls=True)
            check = plane.health_check(member("d1", f"127.0.0.1:{port}", service="device"))
            assert check["grpc_use_tls"] is True and check["TLSServerName"] == device.dns_name  # py-consul spells it so
            await plane.register(member("d1", f"127.0.0.1:{port}", service="device"))
            consul_client = await client(agent, closing)

            want = "passing" if agent_has_a_fleet_certificate else "critical"

            async def reached() -> bool:
                _, entries = await consul_client.health.service("fogline-device")
                return [c["Status"] for e in entries for c in e["Checks"] if c["ServiceID"] == "d1"] == [want]

            await until(reached, 3.0, f"the member's TLS check to be {want}")
    finally:
        await server.stop(None)
