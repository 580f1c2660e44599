"""An edge master over real gRPC: forwards to its devices, tags responses, validates its control plane."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest

from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster, EdgeSettings
from fogline import Client
from fogline._proto import control_pb2 as cpb
from fogline._proto import control_pb2_grpc as cpb_grpc
from fogline.errors import ErrorCode, FoglineError
from tests.polling import until


async def test_responses_through_the_edge_say_tier_node_and_route(edge: EdgeMaster) -> None:
    async with Client(edge.endpoints["grpc"]) as client:
        result = await client.infer("mlp", {"input": np.ones((2, 64), np.float32)}, request_id="r-9")
        assert result.outputs["logits"].shape == (2, 10)
        assert result.parameters == {"fogline.tier": "device", "fogline.node": "dev-a",
                                     "fogline.route": "placement", "fogline.attempts": 1}
        meta = await client.model_metadata("mlp")
        assert meta.inputs[0].shape == (-1, 64)
        assert await client.model_ready("mlp") and not await client.model_ready("resnet")


async def test_edge_status_lists_devices_with_their_load(edge: EdgeMaster) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{edge.endpoints['http']}/v1/status") as r:
            status = await r.json()
        async with http.get(f"http://{edge.endpoints['http']}/readyz") as r:
            assert r.status == 200
    assert status["tier"] == "edge" and status["region"] == "r" and status["models"] == ["cnn", "mlp"]
    [device] = status["devices"]
    assert device["id"] == "dev-a" and device["models"] == ["cnn", "mlp"]
    assert device["load"] == {"in_flight": 0, "queue_depth": 0} and device["outstanding"] == 0


async def test_an_edge_without_devices_is_not_ready_and_says_why() -> None:
    master = EdgeMaster(EdgeSettings(edge_id="lonely", region="empty"))
    await master.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://{master.endpoints['http']}/readyz") as r:
            assert r.status == 503
            assert (await r.json())["reason"] == "no device node registered in region 'empty'"
        async with Client(master.endpoints["grpc"]) as client:
            assert await client.server_ready() is False
            with pytest.raises(FoglineError, match="no device node is registered in region 'empty'") as info:
                await client.infer("mlp", {"input": np.ones((1, 64), np.float32)})
            assert info.value.code is ErrorCode.UNAVAILABLE
    finally:
        await master.drain()


@pytest.mark.parametrize(("member", "message"), [
    (cpb.Member(id="x", service="device", address="", region="r"), "member id and address are required"),
    (cpb.Member(id="x", service="worker", address="h:1", region="r"), "service 'worker' cannot join here"),
    (cpb.Member(id="x", service="device", address="h:1", region="elsewhere"), "region 'elsewhere' cannot join region 'r'"),
])
async def test_the_control_plane_refuses_members_that_do_not_belong(edge: EdgeMaster, member: cpb.Member,
                                                                   message: str) -> None:
    async with grpc.aio.insecure_channel(edge.endpoints["control"]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cpb_grpc.ControlStub(channel).Register(cpb.RegisterRequest(member=member), timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()
    assert set(edge.pool.endpoints) == {"dev-a"}


async def test_inference_is_not_served_on_the_control_port(edge: EdgeMaster) -> None:
    async with Client(edge.endpoints["control"]) as client:
        with pytest.raises(FoglineError) as info:
            await client.infer("mlp", {"input": np.ones((1, 64), np.float32)})
    assert info.value.code is ErrorCode.NOT_FOUND  # UNIMPLEMENTED: admin and inference are separate


async def test_a_device_that_deregisters_leaves_routing_at_once(edge: EdgeMaster, sample_models: Path) -> None:
    second = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="dev-b", region="r",
                                       master=edge.endpoints["control"]))
    await second.start()
    await until(lambda: "dev-b" in edge.pool.endpoints)
    await second.drain()
    assert "dev-b" not in edge.pool.endpoints  # drained = deregistered, before any TTL
