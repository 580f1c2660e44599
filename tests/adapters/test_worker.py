"""A GPU worker over real gRPC and HTTP: TorchScript and ONNX models, where responses say they ran,
batching, device and memory in status, and bad input refused without harm."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import torch

from cloud_master.worker import GpuWorker, WorkerSettings
from fogline import Client
from fogline._proto import inference_pb2 as pb
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.errors import ErrorCode, FoglineError
from tests.torch_models import (
    CLASSIFIER_INPUTS,
    CLASSIFIER_OUTPUTS,
    Classifier,
    classifier_repository,
    config_toml,
    save,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

BATCH_ROWS = 4


@pytest.fixture
async def worker(tmp_path: Path, sample_models: Path) -> AsyncIterator[GpuWorker]:
    """A stand-alone worker on port 0 with a TorchScript classifier, the same classifier held back for
    batches of BATCH_ROWS ("batched"), and the sample ONNX mlp."""
    repository = classifier_repository(tmp_path)
    save(tmp_path, "batched", torch.jit.script(Classifier()),
         config_toml(CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS, max_batch_size=BATCH_ROWS,
                     max_queue_delay_us=60_000_000))  # a batch runs when full: no timing in the test
    shutil.copytree(sample_models / "mlp", repository / "mlp")
    node = GpuWorker(WorkerSettings(model_repository=repository, node_id="gpu-a"))
    await node.start()
    yield node
    await node.drain()


def reference(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return Classifier()(torch.from_numpy(x)).numpy()


async def status(worker: GpuWorker) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"http://{worker.endpoints['http']}/v1/status") as r:
        assert r.status == 200
        return await r.json()


async def test_serves_torchscript_over_v2_and_says_where_it_ran(worker: GpuWorker) -> None:
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    async with Client(worker.endpoints["grpc"]) as client:
        result = await client.infer("classifier", {"x": x})
        np.testing.assert_allclose(result.outputs["probs"], reference(x), rtol=1e-4, atol=1e-6)
        assert (result.model, result.version, result.tier, result.node) == ("classifier", "1", "cloud", "gpu-a")
        meta = await client.model_metadata("classifier")
        assert meta.platform == "pytorch_libtorch"
        assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("x", "FP32", (-1, 8))]
        onnx = await client.infer("mlp", {"input": np.zeros((2, 64), np.float32)})
        assert onnx.outputs["logits"].shape == (2, 10) and onnx.tier == "cloud"
    async with grpc.aio.insecure_channel(worker.endpoints["grpc"]) as channel:
        metadata = await pb_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(pb.ServerMetadataRequest())
    assert metadata.name == "fogline-worker"


async def test_concurrent_requests_are_batched_and_status_shows_device_and_memory(worker: GpuWorker) -> None:
    xs = [np.full((1, 8), i, np.float32) for i in range(BATCH_ROWS)]
    async with Client(worker.endpoints["grpc"]) as client:
        results = await asyncio.gather(*(client.infer("batched", {"x": x}) for x in xs))
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_allclose(result.outputs["probs"], reference(x), rtol=1e-4, atol=1e-6)
    reply = await status(worker)
    assert reply["tier"] == "cloud" and reply["id"] == "gpu-a" and reply["ready"] is True
    batched = reply["models"]["batched"]
    assert (batched["batches"], batched["requests"], batched["largest_batch"]) == (1, BATCH_ROWS, BATCH_ROWS)
    cuda = torch.cuda.is_available()
    assert reply["device"] == (f"cuda:0 ({torch.cuda.get_device_name(0)})" if cuda else "cpu")
    assert reply["models"]["classifier"]["providers"] == [reply["device"]]
    assert reply["memory"]["max_rss_bytes"] > 10 * 1024 * 1024  # a Python process with torch: surely over 10 MiB
    assert ("cuda_allocated_bytes" in reply["memory"]) is cuda


async def test_bad_input_is_invalid_argument_and_the_worker_keeps_serving(worker: GpuWorker) -> None:
    async with Client(worker.endpoints["grpc"]) as client:
        with pytest.raises(FoglineError) as info:
            await client.infer("classifier", {"x": np.zeros((1, 5), np.float32)})
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
        assert "input 'x' of model 'classifier' expects shape [-1, 8] (-1 = any size), got [1, 5]" in str(info.value)
        result = await client.infer("classifier", {"x": np.ones((2, 8), np.float32)})
        np.testing.assert_allclose(result.outputs["probs"], reference(np.ones((2, 8), np.float32)), rtol=1e-4)
