"""A device node over real gRPC and HTTP: correct results, metadata, health, status and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from device_node import DeviceNode, DeviceSettings
from fogline import Client
from fogline._proto import inference_pb2 as pb
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.adapters.grpc.codec import decode_outputs
from fogline.core.serving.repository import ConfigError
from fogline.errors import FoglineError
from tests.polling import until


def reference(models: Path, name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(models / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


async def test_results_match_onnx_runtime_and_say_where_they_ran(device: DeviceNode, sample_models: Path) -> None:
    rng = np.random.default_rng(0)
    async with Client(device.endpoints["grpc"]) as client:
        for name, shape in (("mlp", (5, 64)), ("cnn", (2, 3, 64, 64))):
            x = rng.standard_normal(shape).astype(np.float32)
            result = await client.infer(name, {"input": x})
            np.testing.assert_allclose(result.outputs["logits"], reference(sample_models, name, x), rtol=1e-4, atol=1e-5)
            assert (result.model, result.version, result.tier, result.node) == (name, "1", "device", "dev-a")


async def test_typed_contents_are_answered_with_typed_contents(device: DeviceNode, sample_models: Path) -> None:
    x = np.arange(64, dtype=np.float32).reshape(1, 64) / 64
    request = pb.ModelInferRequest(model_name="mlp", id="req-1")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend(x.ravel().tolist())
    request.outputs.add(name="logits")
    async with grpc.aio.insecure_channel(device.endpoints["grpc"]) as channel:
        reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert reply.id == "req-1" and not reply.raw_output_contents
    assert len(reply.outputs[0].contents.fp32_contents) == 10
    np.testing.assert_allclose(decode_outputs(reply)["logits"], reference(sample_models, "mlp", x), rtol=1e-4, atol=1e-5)


async def test_metadata_readiness_and_grpc_health(device: DeviceNode) -> None:
    async with Client(device.endpoints["grpc"]) as client:
        meta = await client.model_metadata("cnn")
        assert meta.versions == ["1"] and meta.platform == "onnxruntime_onnx"
        assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("input", "FP32", (-1, 3, 64, 64))]
        assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [("logits", "FP32", (-1, 10))]
        assert await client.server_live() and await client.server_ready()
    async with grpc.aio.insecure_channel(device.endpoints["grpc"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        metadata = await pb_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(pb.ServerMetadataRequest())
        assert metadata.name == "fogline-device" and metadata.version


async def test_rest_status_endpoints(device: DeviceNode) -> None:
    base = f"http://{device.endpoints['http']}"
    async with Client(device.endpoints["grpc"]) as client:
        await client.infer("mlp", {"input": np.zeros((1, 64), np.float32)})
        with contextlib.suppress(FoglineError):
            await client.infer("mlp", {"input": np.zeros((1, 3), np.float32)})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200 and (await r.json()) == {"live": True}
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200
        async with http.get(f"{base}/v1/status") as r:
            status = await r.json()
        async with http.get(f"{base}/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            metrics = await r.text()
        async with http.post(f"{base}/v1/status", data=b"x") as r:
            assert r.status == 405
    assert status["tier"] == "device" and status["id"] == "dev-a"
    assert status["models"]["mlp"]["providers"] == ["CPUExecutionProvider"]
    assert status["models"]["mlp"]["requests"] == 1
    assert status["load"] == {"in_flight": 0, "queue_depth": 0}
    assert 'fogline_requests_total{code="OK",model="mlp"} 1.0' in metrics
    assert 'fogline_requests_total{code="INVALID_ARGUMENT",model="mlp"} 1.0' in metrics
    assert 'fogline_batch_size_count{model="mlp"} 1.0' in metrics
    assert 'fogline_queue_depth{model="cnn"} 0.0' in metrics


async def test_draining_refuses_new_calls_after_finishing_running_ones(sample_models: Path) -> None:
    node = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="dev-d", drain_grace_s=5))
    await node.start()
    address = node.endpoints["grpc"]
    async with Client(address, timeout_s=5) as client:
        await client.infer("cnn", {"input": np.zeros((1, 3, 64, 64), np.float32)})
        running = [asyncio.ensure_future(client.infer("cnn", {"input": np.zeros((8, 3, 64, 64), np.float32)}))
                   for _ in range(4)]
        await asyncio.sleep(0)  # the calls are on the wire
        cnn = node.dataplane.models["cnn"].batcher
        # All four have arrived (done, running or queued): drain must finish them, not refuse them.
        await until(lambda: cnn.stats.requests + cnn.in_flight + cnn.queue_depth == 5)
        await node.drain()
        results = await asyncio.gather(*running)
        assert all(r.outputs["logits"].shape == (8, 10) for r in results)


async def test_a_pytorch_model_is_refused_with_a_pointer_to_the_gpu_worker(tmp_path: Path) -> None:
    (tmp_path / "heavy" / "1").mkdir(parents=True)
    (tmp_path / "heavy" / "1" / "model.pt").write_bytes(b"")  # never read: refused by platform
    (tmp_path / "heavy" / "config.toml").write_text(
        'platform = "pytorch"\n'
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [8]\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [3]\n')
    node = DeviceNode(DeviceSettings(model_repository=tmp_path))
    with pytest.raises(ConfigError, match="a device node runs ONNX models only, not 'pytorch'; "
                                          r"serve this model on a GPU worker \(fogline worker\)"):
        await node.start()
