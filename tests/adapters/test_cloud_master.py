"""The cloud master over real gRPC and HTTP: edge masters of two regions and a GPU worker register
with it; requests are forwarded to a region's edge, keeping the edge's tags; the topology shows it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from cloud_master import CloudMaster, CloudSettings
from cloud_master.worker import GpuWorker, WorkerSettings
from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster, EdgeSettings
from fogline import Client
from fogline.errors import ErrorCode, FoglineError
from tests.adapters.conftest import MAX_MESSAGE_BYTES
from tests.polling import until

MLP_INPUT = {"input": np.ones((1, 64), np.float32)}


@dataclass
class Region:
    edge: EdgeMaster
    device: DeviceNode


async def start_region(cloud: CloudMaster, region: str, models: Path) -> Region:
    """An edge master registered with ``cloud`` and one device node (``dev-<region>``) under it."""
    edge = EdgeMaster(EdgeSettings(edge_id=f"edge-{region}", region=region, cloud=cloud.endpoints["control"],
                                   max_message_bytes=MAX_MESSAGE_BYTES))
    await edge.start()
    device = DeviceNode(DeviceSettings(model_repository=models, node_id=f"dev-{region}", region=region,
                                       master=edge.endpoints["control"], max_message_bytes=MAX_MESSAGE_BYTES))
    await device.start()
    # The cloud sees the edge's models once a heartbeat after the device joined has arrived.
    await until(lambda: region in cloud.routing.regions
                and "mlp" in cloud.routing.regions[region].pool.models())
    return Region(edge, device)


async def stop_region(region: Region) -> None:
    await region.device.drain()
    await region.edge.drain()


@pytest.fixture
async def cloud() -> AsyncIterator[CloudMaster]:
    master = CloudMaster(CloudSettings(cloud_id="cloud-t", heartbeat_interval_s=0.1, member_ttl_s=2.0,
                                       max_message_bytes=MAX_MESSAGE_BYTES))
    await master.start()
    yield master
    await master.drain()


@pytest.fixture
async def regions(cloud: CloudMaster, sample_models: Path) -> AsyncIterator[dict[str, Region]]:
    started = {name: await start_region(cloud, name, sample_models) for name in ("eu", "us")}
    yield started
    for region in started.values():
        await stop_region(region)


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        return reply.status, await reply.json()


async def test_a_request_naming_a_region_runs_there_with_the_edges_tags(cloud: CloudMaster,
                                                                        regions: dict[str, Region]) -> None:
    async with Client(cloud.endpoints["grpc"]) as client:
        result = await client.infer("mlp", MLP_INPUT, parameters={"fogline.region": "us"}, request_id="c-1")
        assert result.id == "c-1" and result.outputs["logits"].shape == (1, 10)
        assert result.parameters == {"fogline.tier": "device", "fogline.node": "dev-us",
                                     "fogline.route": "placement", "fogline.attempts": 1,
                                     "fogline.region": "us"}
        anywhere = await client.infer("cnn", {"input": np.ones((1, 3, 64, 64), np.float32)})
        assert anywhere.tier == "device"
        assert (anywhere.node, anywhere.parameters["fogline.region"]) in {("dev-eu", "eu"), ("dev-us", "us")}
        assert await client.model_ready("mlp") and (await client.model_metadata("mlp")).inputs[0].shape == (-1, 64)


async def test_unknown_regions_and_models_are_not_found(cloud: CloudMaster, regions: dict[str, Region]) -> None:
    async with Client(cloud.endpoints["grpc"]) as client:
        with pytest.raises(FoglineError, match=r"region 'mars' is unknown; known regions: \['eu', 'us'\]") as info:
            await client.infer("mlp", MLP_INPUT, parameters={"fogline.region": "mars"})
        assert info.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(FoglineError, match="model 'resnet' is not served in any region") as info:
            await client.infer("resnet", MLP_INPUT)
        assert info.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(FoglineError, match="model 'resnet' is not served in region 'eu'") as info:
            await client.infer("resnet", MLP_INPUT, parameters={"fogline.region": "eu"})
        assert info.value.code is ErrorCode.NOT_FOUND


async def test_topology_lists_regions_edges_devices_and_workers(cloud: CloudMaster, regions: dict[str, Region],
                                                                sample_models: Path) -> None:
    worker = GpuWorker(WorkerSettings(model_repository=sample_models, node_id="gpu-a", device="cpu",
                                      master=cloud.endpoints["control"]))
    await worker.start()
    try:
        await until(lambda: cloud.registry.get("gpu-a") is not None)
        status, topology = await get(f"http://{cloud.endpoints['http']}/v1/topology")
    finally:
        await worker.drain()
    assert status == 200 and sorted(topology["regions"]) == ["eu", "us"]
    for name, region in regions.items():
        [edge] = topology["regions"][name]["edges"]
        assert edge["id"] == f"edge-{name}" and edge["address"] == region.edge.endpoints["grpc"]
        assert edge["http"] == region.edge.endpoints["http"] and edge["models"] == ["cnn", "mlp"]
        assert edge["healthy"] is True and set(edge["load"]) == {"in_flight", "queue_depth", "outstanding"}
        assert [d["id"] for d in edge["devices"]] == [f"dev-{name}"]
    [worker_entry] = topology["workers"]
    assert worker_entry["id"] == "gpu-a" and worker_entry["address"] == worker.endpoints["grpc"]
    assert worker_entry["models"] == ["cnn", "mlp"] and worker_entry["healthy"] is True
    assert "gpu-a" not in cloud.pool.endpoints  # a worker is not an edge: no inference is routed to it


async def test_an_edge_that_stops_answering_is_listed_unhealthy(cloud: CloudMaster,
                                                                regions: dict[str, Region]) -> None:
    eu = regions["eu"].edge
    await eu._http.cleanup()  # its REST server is gone; it still heartbeats
    _, topology = await get(f"http://{cloud.endpoints['http']}/v1/topology")
    [edge] = topology["regions"]["eu"]["edges"]
    assert edge["healthy"] is False and edge["devices"] == []
    assert topology["regions"]["us"]["edges"][0]["healthy"] is True


async def test_a_draining_edge_leaves_topology_and_routing(cloud: CloudMaster, sample_models: Path) -> None:
    eu, us = await start_region(cloud, "eu", sample_models), await start_region(cloud, "us", sample_models)
    try:
        await stop_region(us)
        assert sorted(cloud.routing.regions) == ["eu"]  # deregistered while draining, before any TTL
        _, topology = await get(f"http://{cloud.endpoints['http']}/v1/topology")
        assert sorted(topology["regions"]) == ["eu"]
        async with Client(cloud.endpoints["grpc"]) as client:
            for _ in range(5):
                assert (await client.infer("mlp", MLP_INPUT)).node == "dev-eu"
            with pytest.raises(FoglineError, match=r"known regions: \['eu'\]"):
                await client.infer("mlp", MLP_INPUT, parameters={"fogline.region": "us"})
    finally:
        await stop_region(eu)


async def test_a_cloud_without_edges_is_not_ready_and_says_why(cloud: CloudMaster) -> None:
    status, body = await get(f"http://{cloud.endpoints['http']}/readyz")
    assert status == 503 and body["reason"] == "no edge master registered"
    status, body = await get(f"http://{cloud.endpoints['http']}/v1/status")
    assert status == 200 and body["tier"] == "cloud" and body["edges"] == [] and body["ready"] is False
    async with Client(cloud.endpoints["grpc"]) as client:
        assert await client.server_ready() is False
        with pytest.raises(FoglineError, match="no endpoint is registered in any region") as info:
            await client.infer("mlp", MLP_INPUT)
        assert info.value.code is ErrorCode.UNAVAILABLE


async def test_status_shows_edges_with_their_load(cloud: CloudMaster, regions: dict[str, Region]) -> None:
    status, body = await get(f"http://{cloud.endpoints['http']}/v1/status")
    assert status == 200 and body["ready"] is True and body["regions"] == ["eu", "us"]
    assert body["models"] == ["cnn", "mlp"]
    assert {e["id"]: e["region"] for e in body["edges"]} == {"edge-eu": "eu", "edge-us": "us"}
    status, ready = await get(f"http://{regions['eu'].edge.endpoints['http']}/v1/status")
    assert ready["cloud"]["master"] == cloud.endpoints["control"] and ready["registered"] is True
