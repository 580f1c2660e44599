"""A master's /metrics follows its members: the series labelled with a member that deregisters (a
device of an edge master, an edge master of the cloud master: its upstream attempts, its breaker's
state, trips and rejections) go away; those of the others stay."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np

from cloud_master import CloudMaster, CloudSettings
from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster
from fogline import Client
from fogline.servers.master import Master
from tests.adapters.conftest import MAX_MESSAGE_BYTES
from tests.adapters.test_cloud_master import Region, start_region, stop_region
from tests.polling import until

DEADLINE_S = 10.0
MLP_INPUT = {"input": np.ones((1, 64), np.float32)}
PER_ENDPOINT = {"fogline_upstream_requests_total", "fogline_upstream_requests_created", "fogline_breaker_state",
                "fogline_breaker_trips_total", "fogline_breaker_rejections_total"}


async def scrape(master: Master) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://{master.endpoints['http']}/metrics") as r:
        assert r.status == 200
        return await r.text()


def series(text: str, endpoint: str) -> set[str]:
    """The names of the series labelled with ``endpoint``."""
    return {line.split("{")[0] for line in text.splitlines() if f'endpoint="{endpoint}"' in line}


async def test_the_series_of_a_device_that_deregisters_leave_metrics(edge: EdgeMaster, sample_models: Path) -> None:
    second = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="dev-b", region="r",
                                       master=edge.endpoints["control"], max_message_bytes=MAX_MESSAGE_BYTES))
    await second.start()
    await until(lambda: "dev-b" in edge.pool.endpoints)
    async with Client(edge.endpoints["grpc"]) as client, asyncio.timeout(DEADLINE_S):
        served: set[str] = set()
        while served != {"dev-a", "dev-b"}:  # power of two choices: both soon get some
            served.add((await client.infer("mlp", MLP_INPUT)).parameters["fogline.node"])
    before = await scrape(edge)
    assert series(before, "dev-b") >= PER_ENDPOINT and series(before, "dev-a") >= PER_ENDPOINT

    await second.drain()  # deregisters
    after = await until_gone(edge, "dev-b")
    assert series(after, "dev-a") >= PER_ENDPOINT


async def test_the_series_of_an_edge_that_deregisters_leave_the_cloud_masters_metrics(sample_models: Path) -> None:
    cloud = CloudMaster(CloudSettings(cloud_id="cloud-m", heartbeat_interval_s=0.1, max_message_bytes=MAX_MESSAGE_BYTES))
    await cloud.start()
    regions: list[Region] = []
    try:
        for name in ("eu", "us"):
            regions.append(await start_region(cloud, name, sample_models))
        async with Client(cloud.endpoints["grpc"]) as client:
            for region in ("eu", "us"):
                await client.infer("mlp", MLP_INPUT, parameters={"fogline.region": region})
        before = await scrape(cloud)
        assert series(before, "edge-us") >= PER_ENDPOINT and series(before, "edge-eu") >= PER_ENDPOINT
        await stop_region(regions.pop())  # us: drained, so deregistered
        after = await until_gone(cloud, "edge-us")
        assert series(after, "edge-eu") >= PER_ENDPOINT
    finally:
        for started in regions:
            await stop_region(started)
        await cloud.drain()


async def until_gone(master: Master, endpoint: str) -> str:
    """Scrape ``master`` until no series names ``endpoint``; the last scrape."""
    async with asyncio.timeout(DEADLINE_S):
        while series(text := await scrape(master), endpoint):
            await asyncio.sleep(0.02)
    return text
