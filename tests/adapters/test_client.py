"""The SDK against real servers: failover across endpoints, deadlines, the sync wrapper."""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pytest

from device_node import DeviceNode, DeviceSettings
from fogline import Client, SyncClient
from fogline.adapters.grpc.server import bind
from fogline.errors import DeadlineExceededError, UnavailableError

X = {"input": np.ones((1, 64), np.float32)}


@pytest.fixture
async def dead_address() -> str:
    return await dead()


async def dead() -> str:
    """An address where a server was and no longer is."""
    server = grpc.aio.server()
    port = bind(server, "127.0.0.1", 0)
    await server.start()
    await server.stop(None)
    return f"127.0.0.1:{port}"


async def test_the_client_fails_over_to_the_next_endpoint_and_stays_there(device: DeviceNode, dead_address: str) -> None:
    async with Client([dead_address, device.endpoints["grpc"]], timeout_s=5) as client:
        first = await client.infer("mlp", X)
        assert first.endpoint == device.endpoints["grpc"]
        second = await client.infer("mlp", X)
        assert second.endpoint == device.endpoints["grpc"]


async def test_every_endpoint_down_is_unavailable_naming_them(dead_address: str) -> None:
    other = await dead()
    async with Client([dead_address, other], timeout_s=5) as client:
        with pytest.raises(UnavailableError, match=f"no endpoint answered: {dead_address}.*; {other}"):
            await client.infer("mlp", X)


async def test_a_call_that_outlives_its_timeout_is_deadline_exceeded(device: DeviceNode) -> None:
    async with Client(device.endpoints["grpc"]) as client:
        with pytest.raises(DeadlineExceededError):
            await client.infer("cnn", {"input": np.ones((32, 3, 64, 64), np.float32)}, timeout_s=0.001)
        assert (await client.infer("mlp", X)).outputs["logits"].shape == (1, 10)


def test_the_sync_client_works_without_an_event_loop(sample_models) -> None:
    ready = threading.Event()
    box: dict[str, object] = {}

    async def serve() -> None:
        node = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="sync"))
        box["address"] = (await node.start())["grpc"]
        box["stop"] = stop = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        await stop.wait()
        await node.drain()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(30)
        with SyncClient(str(box["address"])) as client:
            result = client.infer("mlp", X, session="s")
            assert result.outputs["logits"].shape == (1, 10) and result.node == "sync"
            assert client.model_ready("mlp")
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)  # type: ignore[union-attr]
        thread.join(30)


async def test_the_client_leaves_a_failed_endpoint_and_comes_back_when_it_recovers(sample_models) -> None:  # type: ignore[no-untyped-def]
    from fogline.core.routing.breaker import BreakerSettings

    def node(port: int, name: str) -> DeviceNode:
        return DeviceNode(DeviceSettings(model_repository=sample_models, node_id=name, grpc_port=port))

    home, away = node(0, "home"), node(0, "away")
    await home.start()
    await away.start()
    address = home.endpoints["grpc"]
    breaker = BreakerSettings(consecutive_failures=1, base_open_s=0.1, open_jitter=0.0, probe_successes=1)
    try:
        async with Client([address, away.endpoints["grpc"]], timeout_s=5, breaker=breaker) as client:
            assert (await client.infer("mlp", X)).endpoint == address
            await home.drain()
            for _ in range(5):  # the home region is down: every call is answered by the other
                assert (await client.infer("mlp", X)).endpoint == away.endpoints["grpc"]
            home = node(int(address.rsplit(":", 1)[1]), "home")
            await home.start()
            async with asyncio.timeout(10):
                while (await client.infer("mlp", X)).endpoint != address:
                    await asyncio.sleep(0.02)
            assert client.breakers[address].state.value == "closed"
    finally:
        await home.drain()
        await away.drain()
