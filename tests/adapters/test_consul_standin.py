"""The Consul stand-in keeps Consul's documented semantics (the rest of the Consul suite relies on it).

Run against a real ``consul agent -dev`` when one is installed (see tests/consul_fixture.py), except
where a test needs the stand-in's short reaper or its restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.consul_fixture import ACL_TOKEN, ConsulAgent, consul_acl_agent, consul_agent, consul_standin
from tests.consul_standin import parse_duration

__all__ = ["consul_acl_agent", "consul_agent", "consul_standin"]  # fixtures used by name


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def url(agent: ConsulAgent, path: str) -> str:
    return f"http://{agent.address}{path}"


async def put(http: aiohttp.ClientSession, agent: ConsulAgent, path: str, **kwargs) -> aiohttp.ClientResponse:
    headers = {"X-Consul-Token": agent.token} if agent.token else {}
    async with http.put(url(agent, path), headers=headers, **kwargs) as response:
        await response.read()
        return response


async def get_index(http: aiohttp.ClientSession, agent: ConsulAgent, path: str) -> tuple[int, int, float]:
    """(status, X-Consul-Index, seconds taken) of a GET."""
    start = time.monotonic()
    async with http.get(url(agent, path)) as response:
        await response.read()
        return response.status, int(response.headers["X-Consul-Index"]), time.monotonic() - start


def test_go_durations_parse_like_go() -> None:
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1m30s") == 90
    assert parse_duration("1.5h") == 5400
    assert parse_duration("0") == 0
    assert parse_duration(2_000_000_000) == 2  # a JSON number is nanoseconds
    with pytest.raises(ValueError):
        parse_duration("10")


async def test_a_missing_key_is_404_with_an_index_that_is_never_zero(consul_agent, http) -> None:
    async with http.get(url(consul_agent, "/v1/kv/fogline/missing")) as response:
        assert response.status == 404
        assert int(response.headers["X-Consul-Index"]) >= 1
        assert response.headers["X-Consul-KnownLeader"] == "true"
        assert "X-Consul-LastContact" in response.headers
    _, index, _ = await get_index(http, consul_agent, "/v1/health/service/fogline-none")
    assert index >= 1


async def test_a_stale_index_answers_at_once_and_a_current_one_waits_out_the_wait(consul_agent, http) -> None:
    assert (await put(http, consul_agent, "/v1/kv/fogline/a", data=b"1")).status == 200
    status, index, _ = await get_index(http, consul_agent, "/v1/kv/fogline/a")
    assert status == 200

    _, again, took = await get_index(http, consul_agent, f"/v1/kv/fogline/a?index={index - 1}&wait=5s")
    assert again == index and took < 1.0

    _, same, took = await get_index(http, consul_agent, f"/v1/kv/fogline/a?index={index}&wait=300ms")
    assert same == index
    assert 0.29 <= took < 0.3 * 17 / 16 + 0.5  # Consul adds up to wait/16 of jitter


async def test_a_change_wakes_a_blocked_query_with_a_higher_index(consul_agent, http) -> None:
    await put(http, consul_agent, "/v1/kv/fogline/cfg/x", data=b"1")
    _, index, _ = await get_index(http, consul_agent, "/v1/kv/fogline/cfg/?recurse")
    waiter = asyncio.create_task(get_index(http, consul_agent, f"/v1/kv/fogline/cfg/?recurse&index={index}&wait=10s"))
    await asyncio.sleep(0.1)  # NOTE: not a synchronisation: the assertion below holds either way
    assert not waiter.done()
    await put(http, consul_agent, "/v1/kv/fogline/cfg/y", data=b"2")
    status, new_index, took = await asyncio.wait_for(waiter, 2.0)
    assert status == 200 and new_index > index and took < 2.0


async def test_kv_cas_flags_and_recursive_delete(consul_agent, http) -> None:
    assert await (await http.put(url(consul_agent, "/v1/kv/fogline/k?cas=0"), data=b"v")).json() is True
    assert await (await http.put(url(consul_agent, "/v1/kv/fogline/k?cas=0"), data=b"w")).json() is False
    async with http.get(url(consul_agent, "/v1/kv/fogline/k")) as response:
        [entry] = await response.json()
    assert entry["Value"] == "dg==" and entry["CreateIndex"] == entry["ModifyIndex"] >= 1
    async with http.put(url(consul_agent, f"/v1/kv/fogline/k?cas={entry['ModifyIndex']}&flags=7"), data=b"w") as r:
        assert await r.json() is True
    async with http.get(url(consul_agent, "/v1/kv/fogline/k?raw")) as response:
        assert await response.read() == b"w"
    _, before, _ = await get_index(http, consul_agent, "/v1/kv/fogline/?recurse")
    async with http.delete(url(consul_agent, "/v1/kv/fogline/?recurse")) as response:
        assert await response.json() is True
    status, after, _ = await get_index(http, consul_agent, "/v1/kv/fogline/?recurse")
    assert status == 404 and after > before  # the tombstone moves the prefix's index


async def test_ttl_checks_start_critical_pass_and_expire(consul_agent, http) -> None:
    registration = {"Name": "fogline-test", "ID": "t1", "Port": 1,
                    "Check": {"CheckID": "t1-ttl", "TTL": "1s"}}
    assert (await put(http, consul_agent, "/v1/agent/service/register", json=registration)).status == 200
    passing = "/v1/health/service/fogline-test?passing"

    async with http.get(url(consul_agent, "/v1/health/service/fogline-test")) as response:
        [entry] = await response.json()
    assert {c["CheckID"]: c["Status"] for c in entry["Checks"]}["t1-ttl"] == "critical"
    _, index, _ = await get_index(http, consul_agent, passing)
    async with http.get(url(consul_agent, passing)) as response:
        assert await response.json() == []

    assert (await put(http, consul_agent, "/v1/agent/check/pass/t1-ttl?note=ok")).status == 200
    _, new_index, _ = await get_index(http, consul_agent, f"{passing}&index={index}&wait=5s")
    assert new_index > index
    async with http.get(url(consul_agent, passing)) as response:
        assert [e["Service"]["ID"] for e in await response.json()] == ["t1"]

    async with http.get(url(consul_agent, f"{passing}&index={new_index}&wait=5s")) as response:
        assert await response.json() == []  # the TTL ran out
    assert (await put(http, consul_agent, "/v1/agent/check/pass/nope")).status == 404


async def test_meta_is_validated_like_consul(consul_agent, http) -> None:
    for meta in ({"bad key": "v"}, {"k": "v" * 513}, {f"k{i}": "v" for i in range(65)}, {"consul-x": "v"}):
        response = await put(http, consul_agent, "/v1/agent/service/register", json={"Name": "x", "Meta": meta})
        assert response.status == 400, meta


async def test_a_service_critical_past_deregister_after_is_reaped(consul_standin, http) -> None:
    registration = {"Name": "fogline-test", "ID": "gone", "Port": 1,
                    "Check": {"GRPC": "127.0.0.1:1", "Interval": "50ms", "Timeout": "100ms",
                              "DeregisterCriticalServiceAfter": "100ms"}}  # raised to the stand-in's 200 ms minimum
    await put(http, consul_standin, "/v1/agent/service/register", json=registration)
    started = time.monotonic()
    async with asyncio.timeout(3):
        while "gone" in consul_standin.standin.service_ids():
            await asyncio.sleep(0.02)
    assert time.monotonic() - started >= 0.2
    assert (await put(http, consul_standin, "/v1/agent/service/deregister/gone")).status == 404


async def test_restart_keeps_state_and_a_fresh_restart_moves_the_index_back(consul_standin, http) -> None:
    await put(http, consul_standin, "/v1/kv/a", data=b"1")
    _, index, _ = await get_index(http, consul_standin, "/v1/kv/a")
    await consul_standin.standin.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_index(http, consul_standin, "/v1/kv/a")
    await consul_standin.standin.start()
    assert (await get_index(http, consul_standin, "/v1/kv/a"))[:2] == (200, index)
    await consul_standin.standin.restart(fresh=True)
    status, fresh_index, _ = await get_index(http, consul_standin, "/v1/kv/a")
    assert status == 404 and fresh_index < index


async def test_stopping_drops_a_blocked_query(consul_standin, http) -> None:
    _, index, _ = await get_index(http, consul_standin, "/v1/kv/a")
    waiter = asyncio.create_task(get_index(http, consul_standin, f"/v1/kv/a?index={index}&wait=30s"))
    async with asyncio.timeout(2):
        while not consul_standin.standin.requests_in_flight:
            await asyncio.sleep(0.01)
    await consul_standin.standin.stop()
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(waiter, 2.0)


async def test_acl_unknown_token_anonymous_writes_and_filtered_reads(consul_acl_agent, http) -> None:
    registration = {"Name": "fogline-edge", "ID": "e1", "Port": 1}
    assert (await put(http, consul_acl_agent, "/v1/agent/service/register", json=registration)).status == 200
    async with http.put(url(consul_acl_agent, "/v1/agent/service/register"), json=registration,
                        headers={"X-Consul-Token": "not-a-token"}) as response:
        assert response.status == 403 and "ACL not found" in await response.text()
    async with http.put(url(consul_acl_agent, "/v1/kv/x"), data=b"1") as response:
        assert response.status == 403 and "Permission denied" in await response.text()
    async with http.get(url(consul_acl_agent, "/v1/health/service/fogline-edge")) as response:
        assert response.status == 200 and await response.json() == []
        assert response.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    async with http.get(url(consul_acl_agent, f"/v1/health/service/fogline-edge?token={ACL_TOKEN}")) as response:
        assert [e["Service"]["ID"] for e in await response.json()] == ["e1"]
