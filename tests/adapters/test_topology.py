"""WatchTopology over real gRPC: an edge master learns the GPU workers and the catalog from the cloud
master, serves catalog names, and keeps both when the cloud master goes away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest

from cloud_master import CloudMaster, CloudSettings
from cloud_master.worker import GpuWorker, WorkerSettings
from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster, EdgeSettings
from fogline import Client
from fogline._proto import control_pb2 as cpb
from fogline._proto import control_pb2_grpc as cpb_grpc
from tests.polling import until

CATALOG = """
[models.tiny]
placement = "cloud"
cloud_model = "mlp"
"""
MLP_INPUT = {"input": np.ones((1, 64), np.float32)}


@dataclass
class Stack:
    cloud: CloudMaster
    worker: GpuWorker
    edge: EdgeMaster
    device: DeviceNode
    cloud_up: bool = True


@pytest.fixture
async def stack(tmp_path: Path, sample_models: Path) -> AsyncIterator[Stack]:
    (tmp_path / "catalog.toml").write_text(CATALOG)
    cloud = CloudMaster(CloudSettings(cloud_id="c", catalog=tmp_path / "catalog.toml", heartbeat_interval_s=0.1,
                                      member_ttl_s=1.0, topology_refresh_s=0.1))
    await cloud.start()
    worker = GpuWorker(WorkerSettings(model_repository=sample_models, models=("mlp",), node_id="w1",
                                      master=cloud.endpoints["control"]))
    await worker.start()
    edge = EdgeMaster(EdgeSettings(edge_id="e1", region="r", cloud=cloud.endpoints["control"]))
    await edge.start()
    device = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="d1", region="r",
                                       master=edge.endpoints["control"]))
    await device.start()
    await until(lambda: "w1" in edge.workers.endpoints and "d1" in edge.pool.endpoints)
    stack = Stack(cloud, worker, edge, device)
    yield stack
    for part in (device, edge, worker):
        await part.drain()
    if stack.cloud_up:
        await cloud.drain()


async def status(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        return await reply.json()


async def test_the_edge_serves_a_catalog_name_on_the_worker_it_learned_of(stack: Stack) -> None:
    async with Client(stack.edge.endpoints["grpc"]) as client:
        result = await client.infer("tiny", MLP_INPUT)
        assert (result.model, result.tier, result.node, result.route) == ("tiny", "cloud", "w1", "placement")
        meta = await client.model_metadata("tiny")
        assert meta.name == "tiny" and [t.name for t in meta.inputs] == ["input"]
        assert await client.model_ready("tiny") is True
        assert await client.model_ready("nothing") is False
    body = await status(f"http://{stack.edge.endpoints['http']}/v1/status")
    assert body["cloud"]["topology"]["connected"] is True and body["cloud"]["uplink"] == "up"
    assert [w["id"] for w in body["cloud"]["workers"]] == ["w1"]
    assert "tiny" in body["models"]
    async with aiohttp.ClientSession() as http, http.get(f"http://{stack.edge.endpoints['http']}/metrics") as r:
        metrics = await r.text()
    assert 'fogline_routes_total{model="tiny",route="placement",tier="cloud"} 1.0' in metrics
    assert "fogline_uplink_up 1.0" in metrics and "fogline_topology_connected 1.0" in metrics


async def test_the_edge_keeps_workers_and_catalog_when_the_cloud_master_goes_away(stack: Stack) -> None:
    await stack.cloud.drain()
    stack.cloud_up = False
    await until(lambda: stack.edge.topology is not None and not stack.edge.topology.connected)
    async with Client(stack.edge.endpoints["grpc"]) as client:
        result = await client.infer("tiny", MLP_INPUT)
    assert (result.tier, result.node) == ("cloud", "w1")
    body = await status(f"http://{stack.edge.endpoints['http']}/v1/status")
    assert body["cloud"]["topology"]["connected"] is False and body["cloud"]["topology"]["last_error"]


async def test_only_the_cloud_master_serves_a_topology(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.edge.endpoints["control"]) as channel:
        call = cpb_grpc.ControlStub(channel).WatchTopology(cpb.WatchTopologyRequest(watcher_id="x"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await anext(aiter(call))
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "only the cloud master serves a topology" in (info.value.details() or "")
