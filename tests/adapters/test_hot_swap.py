"""Hot swap on a real device node in this process: a new version under load with no failed request,
a version that cannot load leaving the old one serving, and Triton's repository calls (admins only)."""

from __future__ import annotations

import asyncio
import gc
import shutil
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from device_node import DeviceNode, DeviceSettings
from fogline._proto import inference_pb2 as pb
from fogline.core.serving.dataplane import ServedModel
from fogline.core.serving.repository import ModelConfig
from fogline.errors import InternalError, InvalidInputError, ModelNotFoundError
from fogline.local.samples import build_cnn, build_sample_repository
from fogline.sdk.client import Client
from tests.polling import until

TOKEN = "s3cret-admin-token-for-tests"
CNN_INPUT = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
METHOD = "/inference.GRPCInferenceService/"


def add_cnn_version(models: Path, version: str, seed: int, scratch: Path) -> Path:
    """Version ``version`` of cnn in ``models``: the cnn sample with other weights (other outputs)."""
    build_cnn(scratch / f"cnn-{version}", seed=seed)
    target = models / "cnn" / version
    target.mkdir()
    shutil.copy(scratch / f"cnn-{version}" / "1" / "model.onnx", target / "model.onnx")
    return target / "model.onnx"


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@dataclass
class Runtimes:
    """Every runtime the node loaded, by (model, version), held weakly: released ones disappear."""

    loaded: dict[tuple[str, str], weakref.ref[Any]] = field(default_factory=dict)

    def wrap(self, load: Callable[[ModelConfig], Any]) -> Callable[[ModelConfig], Any]:
        def recording(config: ModelConfig) -> Any:
            runtime = load(config)
            self.loaded[(config.name, config.version)] = weakref.ref(runtime)
            return runtime
        return recording

    def alive(self, name: str, version: str) -> bool:
        gc.collect()
        ref = self.loaded.get((name, version))
        return ref is not None and ref() is not None


@dataclass
class Node:
    node: DeviceNode
    models: Path
    runtimes: Runtimes
    v2: Path

    @property
    def address(self) -> str:
        return str(self.node.endpoints["grpc"])


@pytest.fixture
async def swap_node(tmp_path: Path) -> AsyncIterator[Node]:
    """A device node on a copy of the sample repository with cnn version 2 on disk (serving 1: it was
    started with only version 1 there), taking the admin token."""
    models = build_sample_repository(tmp_path / "models")
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    node = DeviceNode(DeviceSettings(model_repository=models, node_id="dev-s", admin_token_file=token_file,
                                     drain_grace_s=5))
    runtimes = Runtimes()
    node._load_runtime = runtimes.wrap(node._load_runtime)
    await node.start()
    v2 = add_cnn_version(models, "2", seed=11, scratch=tmp_path / "scratch")
    yield Node(node, models, runtimes, v2)
    await node.drain()


@dataclass
class Answer:
    started: float
    finished: float
    version: str = ""
    logits: np.ndarray | None = None
    error: BaseException | None = None


async def closed_loop(client: Client, stop: asyncio.Event, answers: list[Answer], *, version: str = "") -> None:
    """One worker: one cnn request at a time until ``stop``."""
    while not stop.is_set():
        answer = Answer(time.monotonic(), 0.0)
        try:
            result = await client.infer("cnn", {"input": CNN_INPUT}, version=version)
            answer.version, answer.logits = result.version, result.outputs["logits"]
        except Exception as exc:
            answer.error = exc
        answer.finished = time.monotonic()
        answers.append(answer)


async def test_a_new_version_swaps_in_under_load_with_no_failed_request(swap_node: Node, tmp_path: Path) -> None:
    node = swap_node.node
    assert node.dataplane is not None
    answers: list[Answer] = []
    stop = asyncio.Event()
    switched: list[float] = []
    add = node.dataplane.add

    def timed_add(served: ServedModel, *, serve: bool = True) -> ServedModel | None:
        switched.append(time.monotonic())
        return add(served, serve=serve)

    node.dataplane.add = timed_add  # type: ignore[method-assign]
    async with Client(swap_node.address, timeout_s=20) as client:
        workers = [asyncio.ensure_future(closed_loop(client, stop, answers)) for _ in range(16)]
        await until(lambda: len(answers) >= 32, 20, "32 answers from version 1")
        served = await node.load("cnn")  # the latest on disk: 2
        swapped_at = time.monotonic()
        await until(lambda: sum(a.started > swapped_at for a in answers) >= 32, 20, "32 answers after the swap")
        stop.set()
        await asyncio.gather(*workers)

    failed = [a.error for a in answers if a.error is not None]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:3]}"
    assert served.spec.version == "2"
    assert {a.version for a in answers if a.finished < swapped_at - 1.0} <= {"1"}
    assert {a.version for a in answers if a.started > swapped_at} == {"2"}  # after the switch: only 2
    assert {a.version for a in answers} == {"1", "2"}
    # Requests on version 1 at the switch finished there (drained), after it.
    assert any(a.version == "1" and a.finished > switched[0] for a in answers)
    expected = {"1": reference(swap_node.models / "cnn" / "1" / "model.onnx", CNN_INPUT),
                "2": reference(swap_node.v2, CNN_INPUT)}
    assert not np.allclose(expected["1"], expected["2"], atol=1e-3)  # the versions answer differently
    for a in answers:
        assert a.logits is not None
        np.testing.assert_allclose(a.logits, expected[a.version], rtol=1e-4, atol=1e-5)

    # The old version is unloaded: out of the data plane, its session released; membership by name unchanged.
    assert node.dataplane is not None and node.dataplane.loaded_versions("cnn") == ["2"]
    await until(lambda: not swap_node.runtimes.alive("cnn", "1"), 10, "the session of cnn v1 to be released")
    assert node._member().models == frozenset({"cnn", "mlp"})
    status = node.status()["models"]["cnn"]
    assert (status["serving"], status["versions"]) == ("2", ["2"]) and "load_error" not in status
    with pytest.raises(ModelNotFoundError, match=r"model 'cnn' version '1' is not loaded on dev-s; loaded: \['2'\]"):
        async with Client(swap_node.address) as client:
            await client.infer("cnn", {"input": CNN_INPUT}, version="1")


async def test_a_version_that_cannot_load_leaves_the_old_one_serving_and_says_why(swap_node: Node) -> None:
    node = swap_node.node
    await node.load("cnn")
    (swap_node.models / "cnn" / "3").mkdir()
    (swap_node.models / "cnn" / "3" / "model.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(InvalidInputError, match=r"model 'cnn' version '3' cannot be loaded: .*3/model.onnx: "
                                                r"ONNX Runtime cannot load it"):
        await node.load("cnn")
    assert node.dataplane is not None and node.dataplane.loaded_versions("cnn") == ["2"]
    status = node.status()["models"]["cnn"]
    assert status["serving"] == "2" and "ONNX Runtime cannot load it" in str(status["load_error"])
    async with Client(swap_node.address) as client:
        assert (await client.infer("cnn", {"input": CNN_INPUT})).version == "2"
    await node.load("cnn", "1", keep_old=True)  # a load that works clears the error
    assert "load_error" not in node.status()["models"]["cnn"]
    assert node.dataplane.loaded_versions("cnn") == ["1", "2"] and node.dataplane.model("cnn").spec.version == "1"


async def test_a_version_that_fails_its_warm_up_never_serves(swap_node: Node) -> None:
    node = swap_node.node
    load = node._load_runtime

    class FailsOnZeros:
        def __init__(self, config: ModelConfig) -> None:
            real = load(config)
            self.spec, self.providers = real.spec, real.providers

        def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise RuntimeError("kernel fault on zeros")

    node._load_runtime = FailsOnZeros
    with pytest.raises(InternalError, match=r"model 'cnn' version '2' cannot be loaded: the warm-up run on zeros "
                                            r"failed: RuntimeError: kernel fault on zeros"):
        await node.load("cnn", "2")
    assert node.dataplane is not None and node.dataplane.loaded_versions("cnn") == ["1"]
    assert "kernel fault on zeros" in str(node.status()["models"]["cnn"]["load_error"])


async def test_concurrent_loads_of_a_model_run_one_after_the_other(swap_node: Node) -> None:
    node = swap_node.node
    assert node.dataplane is not None
    inside, most = 0, 0
    load = node._load_runtime

    def counting(config: ModelConfig) -> Any:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        try:
            time.sleep(0.05)  # NOTE: in the loader thread: long enough for a second load to overlap
            return load(config)
        finally:
            inside -= 1

    node._load_runtime = counting
    await asyncio.gather(node.load("cnn", "2"), node.load("cnn", "1"), node.load("cnn", "2"))
    assert most == 1
    assert node.dataplane.loaded_versions("cnn") == ["2"] and node.dataplane.model("cnn").spec.version == "2"


async def test_unload_takes_a_model_out_and_names_what_is_loaded(swap_node: Node) -> None:
    node = swap_node.node
    assert node.dataplane is not None
    assert await node.unload("mlp") == ["1"]
    assert "mlp" not in node.dataplane.models and node._member().models == frozenset({"cnn"})
    with pytest.raises(ModelNotFoundError, match=r"model 'mlp' is not served by dev-s; it serves \['cnn'\]"):
        await node.unload("mlp")
    with pytest.raises(ModelNotFoundError, match=r"model 'nope' version \(latest\) cannot be loaded: .*has no "
                                                 r"model 'nope'; it has \['cnn', 'mlp'\]"):
        await node.load("nope")
    assert "nope" not in node.status()["models"]
    await node.load("mlp")
    assert node.dataplane.loaded_versions("mlp") == ["1"]


# --- Triton's repository extension over gRPC ---------------------------------------------------------


async def call(address: str, method: str, request: Any, reply_type: Any, token: str | None = None) -> Any:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    async with grpc.aio.insecure_channel(address) as channel:
        stub = channel.unary_unary(METHOD + method, request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=reply_type.FromString)
        return await stub(request, metadata=metadata, timeout=30)


async def code_of(address: str, method: str, request: Any, token: str | None = None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(address, method, request, pb.RepositoryIndexResponse, token)
    return caught.value.code(), caught.value.details() or ""


def index_of(reply: pb.RepositoryIndexResponse) -> list[tuple[str, str, str]]:
    return [(m.name, m.version, m.state) for m in reply.models]


async def test_repository_calls_need_the_admin_token(swap_node: Node) -> None:
    address = swap_node.address
    index = pb.RepositoryIndexRequest()
    load = pb.RepositoryModelLoadRequest(model_name="cnn")
    code, details = await code_of(address, "RepositoryIndex", index)
    assert code is grpc.StatusCode.UNAUTHENTICATED and "missing admin credential" in details
    code, details = await code_of(address, "RepositoryModelLoad", load, token="wrong")
    assert code is grpc.StatusCode.UNAUTHENTICATED and details == "admin token not valid"
    code, _ = await code_of(address, "RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="cnn"))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert swap_node.node.dataplane is not None and swap_node.node.dataplane.loaded_versions("cnn") == ["1"]

    reply = await call(address, "RepositoryIndex", index, pb.RepositoryIndexResponse, TOKEN)
    assert index_of(reply) == [("cnn", "1", "READY"), ("cnn", "2", "UNAVAILABLE"), ("mlp", "1", "READY")]
    await call(address, "RepositoryModelLoad", load, pb.RepositoryModelLoadResponse, TOKEN)
    reply = await call(address, "RepositoryIndex", pb.RepositoryIndexRequest(ready=True), pb.RepositoryIndexResponse,
                       TOKEN)
    assert index_of(reply) == [("cnn", "2", "READY"), ("mlp", "1", "READY")]

    by_version = pb.RepositoryModelLoadRequest(model_name="cnn")
    by_version.parameters["version"].int64_param = 1
    await call(address, "RepositoryModelLoad", by_version, pb.RepositoryModelLoadResponse, TOKEN)
    assert swap_node.node.dataplane.loaded_versions("cnn") == ["1"]

    (swap_node.models / "cnn" / "3").mkdir()
    (swap_node.models / "cnn" / "3" / "model.onnx").write_bytes(b"\x00garbage" * 100)
    code, details = await code_of(address, "RepositoryModelLoad", load, token=TOKEN)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "ONNX Runtime cannot load it" in details, details
    reply = await call(address, "RepositoryIndex", index, pb.RepositoryIndexResponse, TOKEN)
    reasons = {m.version: (m.state, m.reason) for m in reply.models if m.name == "cnn"}
    assert reasons["3"][0] == "UNAVAILABLE" and "ONNX Runtime cannot load it" in reasons["3"][1], reasons
    assert reasons["2"] == ("UNAVAILABLE", "") and reasons["1"] == ("READY", "")  # the reason is 3's only

    unload = pb.RepositoryModelUnloadRequest(model_name="mlp")
    unload.parameters["unload_dependents"].bool_param = False  # what tritonclient sends
    await call(address, "RepositoryModelUnload", unload, pb.RepositoryModelUnloadResponse, TOKEN)
    async with Client(address) as client:
        with pytest.raises(ModelNotFoundError, match="model 'mlp' is not served by dev-s"):
            await client.infer("mlp", {"input": np.zeros((1, 64), np.float32)})
        assert (await client.infer("cnn", {"input": CNN_INPUT})).version == "1"


async def test_bad_repository_requests_are_refused_with_the_reason(swap_node: Node) -> None:
    address = swap_node.address
    code, details = await code_of(address, "RepositoryModelLoad", pb.RepositoryModelLoadRequest(), token=TOKEN)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details == "model_name is required"
    with_config = pb.RepositoryModelLoadRequest(model_name="cnn")
    with_config.parameters["config"].string_param = "{}"
    code, details = await code_of(address, "RepositoryModelLoad", with_config, token=TOKEN)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "['config'] are not supported" in details
    unknown = pb.RepositoryModelLoadRequest(model_name="cnn")
    unknown.parameters["version"].string_param = "7"
    code, details = await code_of(address, "RepositoryModelLoad", unknown, token=TOKEN)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "no version '7'; it has ['1', '2']" in details
    async with grpc.aio.insecure_channel(address) as channel:
        garbage = channel.unary_unary(METHOD + "RepositoryIndex")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await garbage(b"\xff\xff\xff", timeout=10)  # no credential: refused before the bytes are read
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_node_without_an_admin_credential_refuses_repository_control(device: DeviceNode) -> None:
    code, details = await code_of(device.endpoints["grpc"], "RepositoryIndex", pb.RepositoryIndexRequest(),
                                  token=TOKEN)
    assert code is grpc.StatusCode.PERMISSION_DENIED and details.startswith("repository control disabled")
