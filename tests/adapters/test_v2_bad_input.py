"""Bad input over real gRPC, on a device node and through an edge master: the right status, a message
that says what to fix, and the server keeps serving everyone else."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fogline import Client
from fogline._proto import inference_pb2 as pb
from fogline.errors import ErrorCode, FoglineError
from tests.adapters.conftest import MAX_MESSAGE_BYTES

GOOD = {"input": np.ones((1, 64), np.float32)}


def raw_mlp_request(shape: list[int], raw: bytes, datatype: str = "FP32") -> bytes:
    msg = pb.ModelInferRequest(model_name="mlp")
    msg.inputs.add(name="input", datatype=datatype, shape=shape)
    msg.raw_input_contents.append(raw)
    return msg.SerializeToString()


async def call_raw(address: str, body: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(body, timeout=10)
    return info.value


CLIENT_CASES = [
    ("resnet", GOOD, ErrorCode.NOT_FOUND, "model 'resnet' is not served"),
    ("mlp", {"input": np.ones((1, 63), np.float32)}, ErrorCode.INVALID_ARGUMENT,
     "input 'input' of model 'mlp' expects shape [-1, 64] (-1 = any size), got [1, 63]"),
    ("mlp", {"input": np.ones((1, 64), np.float64)}, ErrorCode.INVALID_ARGUMENT,
     "input 'input' of model 'mlp' expects datatype FP32, got FP64"),
    ("mlp", {"inp": np.ones((1, 64), np.float32)}, ErrorCode.INVALID_ARGUMENT,
     "model 'mlp' takes inputs ['input']; missing ['input'], unknown ['inp']"),
    ("mlp", {"input": np.ones((65, 64), np.float32)}, ErrorCode.INVALID_ARGUMENT,
     "over the model's max_batch_size 64; split the request"),
]

RAW_CASES = [
    (raw_mlp_request([1, 64], b"\0" * 100), "input 'input': raw content is 100 bytes, but shape [1, 64] of FP32 needs 256"),
    (b"\xff\xfe garbage \x00\x01", "request body is not a valid inference.ModelInferRequest message"),
    (raw_mlp_request([1, 64], b"\0" * 256, datatype="FLOAT32"), "unknown datatype 'FLOAT32'; use one of"),
]


@pytest.fixture(params=["device", "edge"])
def target(request: pytest.FixtureRequest) -> str:
    """The V2 address of a device node, or of an edge master in front of one."""
    server = request.getfixturevalue(request.param)
    return str(server.endpoints["grpc"])


@pytest.mark.parametrize(("model", "inputs", "code", "message"), CLIENT_CASES)
async def test_bad_request_gets_its_code_and_message_and_the_server_keeps_serving(
        target: str, model: str, inputs: dict, code: ErrorCode, message: str) -> None:
    async with Client(target) as client:
        with pytest.raises(FoglineError) as info:
            await client.infer(model, inputs)
        assert info.value.code is code
        assert message in str(info.value)
        assert (await client.infer("mlp", GOOD)).outputs["logits"].shape == (1, 10)


@pytest.mark.parametrize(("body", "message"), RAW_CASES)
async def test_malformed_bytes_are_invalid_argument(target: str, body: bytes, message: str) -> None:
    err = await call_raw(target, body)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()
    async with Client(target) as client:
        assert (await client.infer("mlp", GOOD)).outputs["logits"].shape == (1, 10)


async def test_payload_over_the_limit_is_resource_exhausted(target: str) -> None:
    too_big = np.zeros((1, MAX_MESSAGE_BYTES // 4 + 1024), np.float32)
    async with Client(target) as client:
        with pytest.raises(FoglineError) as info:
            await client.infer("mlp", {"input": too_big})
        assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert "larger than max" in str(info.value)
        assert (await client.infer("mlp", GOOD)).outputs["logits"].shape == (1, 10)


async def test_an_unloaded_version_is_not_found(target: str) -> None:
    async with Client(target) as client:
        # the device says so itself; an edge knows its devices' versions and says so for the region
        expected = r"version '7' is not loaded (on dev-a; loaded|in region 'r'; loaded versions): \['1'\]"
        with pytest.raises(FoglineError, match=expected) as info:
            await client.infer("mlp", GOOD, version="7")
        assert info.value.code is ErrorCode.NOT_FOUND
        assert await client.model_ready("mlp", "7") is False
        assert await client.model_ready("mlp") is True
