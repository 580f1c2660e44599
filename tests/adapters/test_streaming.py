"""ModelStreamInfer on a device node, and the edge master's multiplexed stream to its devices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster, EdgeSettings
from fogline import Client
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.adapters.grpc.codec import decode_outputs, encode_request
from fogline.errors import DeadlineExceededError, ErrorCode, FoglineError
from tests.polling import until

X = {"input": np.ones((1, 64), np.float32)}


async def test_a_stream_answers_every_request_by_id_and_reports_errors_with_their_code(device: DeviceNode) -> None:
    good = [encode_request("mlp", {"input": np.full((1, 64), i, np.float32)}, request_id=f"r{i}") for i in range(5)]
    bad = encode_request("mlp", {"input": np.ones((1, 3), np.float32)}, request_id="bad")
    async with grpc.aio.insecure_channel(device.endpoints["grpc"]) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        for request in [*good, bad]:
            await call.write(request)
        await call.done_writing()
        replies = {r.infer_response.id: r async for r in call}
    assert set(replies) == {"r0", "r1", "r2", "r3", "r4", "bad"}
    for i in range(5):
        assert not replies[f"r{i}"].error_message
        assert decode_outputs(replies[f"r{i}"].infer_response)["logits"].shape == (1, 10)
    assert "expects shape [-1, 64]" in replies["bad"].error_message
    assert replies["bad"].infer_response.parameters["fogline.code"].string_param == "INVALID_ARGUMENT"


@pytest.fixture(params=[True, False], ids=["stream", "unary"])
async def edge_any(request: pytest.FixtureRequest, sample_models: Path) -> AsyncIterator[EdgeMaster]:
    """An edge master with one device, forwarding over a stream or over unary calls."""
    master = EdgeMaster(EdgeSettings(edge_id="e", region="r", upstream_streams=request.param))
    await master.start()
    node = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="dev-s", region="r",
                                     master=master.endpoints["control"]))
    await node.start()
    await until(lambda: "dev-s" in master.pool.endpoints)
    yield master
    await node.drain()
    await master.drain()


async def test_the_edge_keeps_the_callers_id_and_concurrent_answers_apart(edge_any: EdgeMaster) -> None:
    async with Client(edge_any.endpoints["grpc"]) as client:
        inputs = [np.random.default_rng(i).standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(40)]
        results = await asyncio.gather(*(client.infer("mlp", {"input": x}, request_id=f"id-{i}")
                                         for i, x in enumerate(inputs)))
        direct = [await client.infer("mlp", {"input": x}) for x in inputs[:3]]
        no_id = await client.infer("mlp", X)
    for i, (x, result) in enumerate(zip(inputs, results, strict=True)):
        assert result.id == f"id-{i}" and result.outputs["logits"].shape == (x.shape[0], 10)
    for result, again in zip(results[:3], direct, strict=True):
        np.testing.assert_array_equal(result.outputs["logits"], again.outputs["logits"])
    assert no_id.id == ""  # the stream's own tags never leak to the caller


async def test_errors_keep_their_code_through_the_edge(edge_any: EdgeMaster) -> None:
    async with Client(edge_any.endpoints["grpc"]) as client:
        with pytest.raises(FoglineError, match="expects datatype FP32, got INT32") as info:
            await client.infer("mlp", {"input": np.ones((1, 64), np.int32)})
        assert info.value.code is ErrorCode.INVALID_ARGUMENT


async def test_a_deadline_through_the_edge_is_deadline_exceeded(edge_any: EdgeMaster) -> None:
    async with Client(edge_any.endpoints["grpc"]) as client:
        with pytest.raises(DeadlineExceededError):
            await client.infer("cnn", {"input": np.ones((32, 3, 64, 64), np.float32)}, timeout_s=0.005)
        assert (await client.infer("mlp", X)).outputs["logits"].shape == (1, 10)


async def test_a_stream_to_a_device_that_stops_fails_over_and_reopens(sample_models: Path) -> None:
    master = EdgeMaster(EdgeSettings(edge_id="e", region="r"))
    await master.start()
    nodes = [DeviceNode(DeviceSettings(model_repository=sample_models, node_id=f"n{i}", region="r",
                                       master=master.endpoints["control"])) for i in range(2)]
    for node in nodes:
        await node.start()
    try:
        await until(lambda: len(master.pool.endpoints) == 2)
        async with Client(master.endpoints["grpc"]) as client:
            seen = {(await client.infer("mlp", X, session=f"s{i}")).node for i in range(20)}
            assert seen == {"n0", "n1"}  # both streams are open
            # Stop n0's server without telling the edge: its stream breaks under the edge's feet.
            await nodes[0]._server.stop(None)
            results = [await client.infer("mlp", X, session=f"s{i}") for i in range(20)]
            assert {r.node for r in results} == {"n1"}
            assert any(r.parameters["fogline.attempts"] == 2 for r in results)
    finally:
        for node in nodes:
            await node.drain()
        await master.drain()
