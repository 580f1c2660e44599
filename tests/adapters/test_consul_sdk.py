"""Edge masters and a device node on Consul discovery (in-process, against the stand-in agent): the SDK
finds the edges, follows them as they come and go, and prefers its own region."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster, EdgeSettings
from fogline import Client
from fogline.adapters.consul.discovery import ConsulDiscovery
from fogline.sdk.edges import EdgeFollower, find_edges
from tests.consul_fixture import ConsulAgent, consul_standin  # noqa: F401  (fixture)
from tests.polling import until

X = {"input": np.ones((1, 64), np.float32)}


async def test_the_sdk_follows_the_edge_masters_in_consul(consul_standin: ConsulAgent,  # noqa: F811
                                                          sample_models: Path) -> None:
    settings = consul_standin.settings()
    discovery = ConsulDiscovery(consul=settings, check_interval_s=0.05, watch_max_backoff_s=0.2)
    edge_a = EdgeMaster(EdgeSettings(edge_id="edge-a", region="a", consul=discovery))
    await edge_a.start()
    device = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="dev-a", region="a",
                                       consul=discovery))
    await device.start()
    edge_b = EdgeMaster(EdgeSettings(edge_id="edge-b", region="b", consul=discovery))
    running = [edge_a]
    follower = None
    try:
        async with asyncio.timeout(10):
            while await find_edges(settings, "b") != [edge_a.endpoints["grpc"]]:
                await asyncio.sleep(0.05)
        async with Client(await find_edges(settings, "b"), timeout_s=3.0) as client:
            follower = EdgeFollower(discovery, client, region="b")
            await follower.start()
            await until(lambda: "dev-a" in edge_a.pool.endpoints)
            assert (await client.infer("mlp", X)).node == "dev-a"

            await edge_b.start()  # region b comes up: the client puts it first
            running.append(edge_b)
            await until(lambda: client.endpoints == [edge_b.endpoints["grpc"], edge_a.endpoints["grpc"]])
            result = await client.infer("mlp", X)  # b has no device yet: answered through a
            assert (result.endpoint, result.node) == (edge_a.endpoints["grpc"], "dev-a")

            running.remove(edge_b)
            await edge_b.drain()  # leaves Consul: the client drops it
            await until(lambda: client.endpoints == [edge_a.endpoints["grpc"]])
            running.remove(edge_a)
            await edge_a.drain()  # the last one leaves too: the client keeps it rather than none
            await until(lambda: follower.watch.members == [])
            assert client.endpoints == [edge_a.endpoints["grpc"]]
    finally:
        if follower is not None:
            await follower.stop()
        await device.drain()
        for edge in running:
            await edge.drain()
