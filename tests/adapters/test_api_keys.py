"""API keys on a real V2 gRPC server: refusals with their codes, keys that work for unary and streamed
inference, open health calls, refusals counted without new labels, and members let through over mTLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fogline._proto import inference_pb2 as pb
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.adapters.grpc.server import create_server
from fogline.adapters.grpc.v2 import V2Backend, metadata_message, v2_handler
from fogline.adapters.metrics import UNKNOWN_MODEL, Metrics
from fogline.adapters.tls.credentials import open_channel, server_credentials
from fogline.adapters.tls.material import ClientAuth, TlsMaterial
from fogline.core.parameters import PARAM_CODE
from fogline.core.security.apikeys import INVALID_KEY, MISSING_KEY, ApiKeys, create_key
from fogline.core.security.identity import Identity
from fogline.core.tensors import ModelSpec, TensorSpec
from fogline.errors import ModelNotFoundError
from tests.adapters.test_http_tls import TinyCA

MODELS = ("mlp", "cnn")
SERVER = Identity(service="device", region="r", id="d1")


class FakeBackend(V2Backend):
    """Serves ``MODELS``: each answer names the model and echoes the request's id."""

    name = "fake"

    def ready(self) -> bool:
        return True

    async def model_ready(self, name: str, version: str) -> bool:
        return name in MODELS

    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        if name not in MODELS:
            raise ModelNotFoundError(f"model {name!r} is not served")
        spec = ModelSpec(name=name, version="1", platform="fake", inputs=(TensorSpec("input", "FP32", (-1, 4)),),
                         outputs=(TensorSpec("output", "FP32", (-1, 4)),))
        return metadata_message(spec)

    async def infer(self, data: bytes, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        if request.model_name not in MODELS:
            raise ModelNotFoundError(f"model {request.model_name!r} is not served")
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id).SerializeToString()

    def known_model(self, name: str) -> bool:
        return name in MODELS


@dataclass
class Keys:
    """A keys file with ``all`` (every model) and ``mlp_only`` keys."""

    path: Path
    all: str
    mlp_only: str


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    path = tmp_path / "keys.toml"
    return Keys(path, create_key(path, name="all"), create_key(path, name="mlp-only", models=["mlp"]))


@dataclass
class Served:
    address: str
    metrics: Metrics


@pytest.fixture
async def server(keys: Keys) -> AsyncIterator[Served]:
    """A V2 server (plaintext) of the fake backend requiring API keys from ``keys``."""
    metrics = Metrics("test")
    grpc_server, _ = create_server(v2_handler(FakeBackend(), metrics, api_keys=ApiKeys(keys.path)))
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    yield Served(f"127.0.0.1:{port}", metrics)
    await grpc_server.stop(None)


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def infer_error(address: str, model: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(model_name=model), metadata=metadata, timeout=10)
    return info.value


def refusals(metrics: Metrics, model: str, code: str) -> float:
    return metrics.registry.get_sample_value("fogline_requests_total", {"model": model, "code": code}) or 0.0


async def test_no_key_is_unauthenticated_saying_how_to_send_one(server: Served) -> None:
    err = await infer_error(server.address, "mlp")
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY)


async def test_a_wrong_key_is_unauthenticated(server: Served, keys: Keys) -> None:
    err = await infer_error(server.address, "mlp", auth(keys.all + "x"))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, INVALID_KEY)
    err = await infer_error(server.address, "mlp", (("authorization", "Basic dXNlcjpwYXNz"),))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_model_the_key_may_not_use_is_permission_denied(server: Served, keys: Keys) -> None:
    err = await infer_error(server.address, "cnn", auth(keys.mlp_only))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == "API key 'mlp-only' may not use model 'cnn'"


async def test_a_good_key_serves_model_infer_metadata_and_ready(server: Served, keys: Keys) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for key, model in ((keys.all, "cnn"), (keys.mlp_only, "mlp")):
            reply = await stub.ModelInfer(pb.ModelInferRequest(model_name=model, id="r1"), metadata=auth(key),
                                          timeout=10)
            assert (reply.model_name, reply.id) == (model, "r1")
            meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), metadata=auth(key), timeout=10)
            assert meta.name == model
            ready = await stub.ModelReady(pb.ModelReadyRequest(name=model), metadata=auth(key), timeout=10)
            assert ready.ready
        assert refusals(server.metrics, "mlp", "OK") == 1


async def test_metadata_and_ready_need_a_key_allowed_the_model(server: Served, keys: Keys) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [lambda md: stub.ModelMetadata(pb.ModelMetadataRequest(name="cnn"), metadata=md, timeout=10),
                 lambda md: stub.ModelReady(pb.ModelReadyRequest(name="cnn"), metadata=md, timeout=10)]
        for rpc in calls:
            for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED),
                                   (auth(keys.mlp_only), grpc.StatusCode.PERMISSION_DENIED)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await rpc(metadata)
                assert info.value.code() is code


async def test_health_and_server_metadata_need_no_key(server: Served) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
        assert (await stub.ServerReady(pb.ServerReadyRequest(), timeout=10)).ready
        assert (await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)).name == "fake"


async def test_garbage_bytes_without_a_key_are_unauthenticated_not_parsed(server: Served, keys: Keys) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\xff\xfe garbage", timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\xff\xfe garbage", metadata=auth(keys.all), timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_refusals_are_counted_under_served_models_only(server: Served, keys: Keys) -> None:
    for n in range(5):
        await infer_error(server.address, f"made-up-{n}")
    await infer_error(server.address, "mlp")
    await infer_error(server.address, "cnn", auth(keys.mlp_only))
    assert refusals(server.metrics, UNKNOWN_MODEL, "UNAUTHENTICATED") == 5
    assert refusals(server.metrics, "mlp", "UNAUTHENTICATED") == 1
    assert refusals(server.metrics, "cnn", "PERMISSION_DENIED") == 1
    labels = {s.labels["model"] for m in server.metrics.registry.collect() for s in m.samples
              if s.name == "fogline_requests_total"}
    assert labels == {UNKNOWN_MODEL, "mlp", "cnn"}


async def test_a_stream_serves_the_models_its_key_allows_and_refuses_the_others_one_by_one(
        server: Served, keys: Keys) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(metadata=auth(keys.mlp_only), timeout=10)
        replies = []
        for request_id, model in (("a", "mlp"), ("b", "cnn"), ("c", "mlp")):
            await call.write(pb.ModelInferRequest(model_name=model, id=request_id))
            replies.append(await call.read())  # one at a time: the replies come in order
        await call.done_writing()
        assert await call.code() is grpc.StatusCode.OK
    ok_a, refused_b, ok_c = replies
    assert (ok_a.error_message, ok_a.infer_response.model_name, ok_a.infer_response.id) == ("", "mlp", "a")
    assert refused_b.error_message == "API key 'mlp-only' may not use model 'cnn'"
    assert refused_b.infer_response.id == "b"
    assert refused_b.infer_response.parameters[PARAM_CODE].string_param == "PERMISSION_DENIED"
    assert (ok_c.error_message, ok_c.infer_response.id) == ("", "c")


async def test_a_stream_without_a_valid_key_is_refused_when_it_opens(server: Served, keys: Keys) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for metadata, details in (((), MISSING_KEY), (auth("fogline-ak-nope"), INVALID_KEY)):
            call = stub.ModelStreamInfer(metadata=metadata, timeout=10)
            assert await call.code() is grpc.StatusCode.UNAUTHENTICATED
            assert await call.details() == details


async def test_without_api_keys_nothing_is_asked(keys: Keys) -> None:
    grpc_server, _ = create_server(v2_handler(FakeBackend(), Metrics("test")))
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ModelInfer(pb.ModelInferRequest(model_name="cnn"), timeout=10)).model_name == "cnn"
            call = stub.ModelStreamInfer(timeout=10)
            await call.write(pb.ModelInferRequest(model_name="mlp", id="s"))
            assert (await call.read()).infer_response.id == "s"
            await call.done_writing()
    finally:
        await grpc_server.stop(None)


# --- Members over mTLS ------------------------------------------------------------------------------

@pytest.fixture
async def mtls(keys: Keys, tmp_path: Path) -> AsyncIterator[tuple[str, TinyCA]]:
    """The keyed V2 server over mTLS (client certificates required), and its CA."""
    ca = TinyCA()
    material = ca.material(tmp_path / "server", SERVER)
    grpc_server, _ = create_server(v2_handler(FakeBackend(), Metrics("test"), api_keys=ApiKeys(keys.path)))
    port = grpc_server.add_secure_port("127.0.0.1:0", server_credentials(material, ClientAuth.REQUIRE))
    await grpc_server.start()
    yield f"127.0.0.1:{port}", ca
    await grpc_server.stop(None)


async def mtls_infer(address: str, material: TlsMaterial, model: str,
                     metadata: tuple[tuple[str, str], ...] = ()) -> pb.ModelInferResponse:
    async with open_channel(address, material, peer=SERVER) as channel:
        return await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name=model), metadata=metadata, timeout=10)


async def test_a_fleet_member_forwarding_needs_no_key(mtls: tuple[str, TinyCA], tmp_path: Path) -> None:
    address, ca = mtls
    edge = ca.material(tmp_path / "edge", Identity(service="edge", region="r", id="edge-r"))
    assert (await mtls_infer(address, edge, "cnn")).model_name == "cnn"
    async with open_channel(address, edge, peer=SERVER) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=10)
        await call.write(pb.ModelInferRequest(model_name="cnn", id="m"))
        assert (await call.read()).infer_response.id == "m"
        await call.done_writing()


@pytest.mark.parametrize("who", [Identity(service="client", id="app"),
                                 Identity(service="device", region="r", id="stolen")],  # forwards nothing
                         ids=["client", "device"])
async def test_a_certificate_that_is_not_a_masters_still_needs_a_key(mtls: tuple[str, TinyCA], keys: Keys,
                                                                     tmp_path: Path, who: Identity) -> None:
    address, ca = mtls
    user = ca.material(tmp_path / "user", who)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mtls_infer(address, user, "mlp")
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert (await mtls_infer(address, user, "mlp", auth(keys.mlp_only))).model_name == "mlp"
