"""Data-plane edge cases over real gRPC, on every tier: each gets its status code and a message that
says what to fix, and then the same server answers a good request (it keeps serving everyone else).

Unknown models, raw and typed contents in one input, ``fogline.*`` parameters of the wrong type, a
stream's bad ``fogline.timeout_ms``, names too long to echo, payloads at exactly the message limit
(never a peer failure), and cascades fed NaN or inf."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest

from cloud_master import CloudMaster, CloudSettings
from cloud_master.worker import GpuWorker, WorkerSettings
from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster, EdgeSettings
from fogline import Client
from fogline._proto import inference_pb2 as pb
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.adapters.grpc.codec import encode_request
from fogline.adapters.grpc.status import MAX_DETAILS_BYTES
from fogline.core.escalation.catalog import Catalog, CatalogEntry, Placement
from fogline.core.escalation.router import EdgeRoutingSettings
from fogline.core.routing.dispatch import DispatchSettings
from fogline.errors import ErrorCode, PayloadTooLargeError
from fogline.local.digits import CATALOG_FILE
from tests.adapters.conftest import MAX_MESSAGE_BYTES
from tests.polling import until

GOOD = {"input": np.ones((1, 64), np.float32)}
LONG_NAME = "x" * 10_000
# NOTE: no attempt timeout of the masters' own: on a busy shared CPU a slow batch must not read as a
# peer failure, since these tests assert that no circuit saw one.
PATIENT = DispatchSettings(attempt_timeout_s=None)


async def serves_a_good_request(address: str) -> None:
    """The server at ``address`` still answers a good request."""
    async with Client(address) as client:
        assert (await client.infer("mlp", GOOD)).outputs["logits"].shape == (1, 10)


async def refused(address: str, request: pb.ModelInferRequest) -> grpc.aio.AioRpcError:
    """The error a ModelInfer call of ``request`` (any bytes a client may send) gets."""
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    return info.value


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        assert reply.status == 200
        return await reply.json()


# --- every tier ------------------------------------------------------------------------------------

@asynccontextmanager
async def region(models: Path, *, devices: int = 1, cloud: CloudMaster | None = None, streams: bool = True,
                 model_names: tuple[str, ...] | None = None) -> AsyncIterator[EdgeMaster]:
    """An edge master of region "r" with ``devices`` device nodes (``dev-0``...), all at the 1 MiB limit,
    registered with ``cloud`` if given; stopped on exit."""
    edge = EdgeMaster(EdgeSettings(edge_id="edge-r", region="r", max_message_bytes=MAX_MESSAGE_BYTES,
                                   upstream_streams=streams, cloud=cloud.endpoints["control"] if cloud else None,
                                   dispatch=PATIENT, routing=EdgeRoutingSettings(escalation_timeout_s=5.0)))
    await edge.start()
    nodes = [DeviceNode(DeviceSettings(model_repository=models, models=model_names, node_id=f"dev-{i}", region="r",
                                       master=edge.endpoints["control"], max_message_bytes=MAX_MESSAGE_BYTES))
             for i in range(devices)]
    try:
        for node in nodes:
            await node.start()
        await until(lambda: len(edge.pool.endpoints) == devices)
        if cloud is not None:  # the cloud knows the edge's models once a heartbeat after the devices joined arrived
            await until(lambda: "r" in cloud.routing.regions and edge.router.models() == cloud.pool.models())
        yield edge
    finally:
        for node in nodes:
            await node.drain()
        await edge.drain()


@asynccontextmanager
async def cloud_master(**settings: Any) -> AsyncIterator[CloudMaster]:
    master = CloudMaster(CloudSettings(cloud_id="cloud-t", heartbeat_interval_s=0.1, member_ttl_s=2.0,
                                       max_message_bytes=MAX_MESSAGE_BYTES, dispatch=PATIENT, **settings))
    await master.start()
    try:
        yield master
    finally:
        await master.drain()


@asynccontextmanager
async def gpu_worker(repository: Path, **settings: Any) -> AsyncIterator[GpuWorker]:
    worker = GpuWorker(WorkerSettings(model_repository=repository, node_id="gpu-a", device="cpu",
                                      max_message_bytes=MAX_MESSAGE_BYTES, **settings))
    await worker.start()
    try:
        yield worker
    finally:
        await worker.drain()


@asynccontextmanager
async def serving(tier: str, models: Path) -> AsyncIterator[str]:
    """The V2 address of a stand-alone device node or GPU worker, of an edge master in front of a device
    node, or of a cloud master in front of such an edge."""
    if tier == "device":
        node = DeviceNode(DeviceSettings(model_repository=models, node_id="dev-a", max_message_bytes=MAX_MESSAGE_BYTES))
        await node.start()
        try:
            yield node.endpoints["grpc"]
        finally:
            await node.drain()
    elif tier == "worker":
        async with gpu_worker(models) as worker:
            yield worker.endpoints["grpc"]
    elif tier == "edge":
        async with region(models) as edge:
            yield edge.endpoints["grpc"]
    else:
        async with cloud_master() as cloud, region(models, cloud=cloud):
            yield cloud.endpoints["grpc"]


@pytest.fixture(params=["device", "worker", "edge", "cloud"])
async def tier(request: pytest.FixtureRequest, sample_models: Path) -> AsyncIterator[tuple[str, str]]:
    """(tier, V2 address) of every tier."""
    async with serving(request.param, sample_models) as address:
        yield request.param, address


@pytest.fixture(params=["edge", "cloud"])
async def master(request: pytest.FixtureRequest, sample_models: Path) -> AsyncIterator[str]:
    """The V2 address of a tier that routes by ``fogline.*`` parameters (a model server ignores them)."""
    async with serving(request.param, sample_models) as address:
        yield address


def mlp_request(model: str = "mlp", **tensor: Any) -> pb.ModelInferRequest:
    """A good raw request for the mlp (to ``model``), its tensor's fields overridden by ``tensor``."""
    msg = encode_request(model, GOOD)
    for key, value in tensor.items():
        if key == "raw":
            msg.raw_input_contents[0] = value
        elif key == "typed":
            msg.inputs[0].contents.fp32_contents.extend(value)
        else:
            setattr(msg.inputs[0], key, value)
    return msg


UNKNOWN_MODEL_REQUESTS = {
    "no inputs": pb.ModelInferRequest(model_name="resnet"),
    "raw contents and no inputs": pb.ModelInferRequest(model_name="resnet", raw_input_contents=[b"\0" * 3]),
    "raw and typed contents": mlp_request("resnet", typed=[1.0] * 64),
    "raw contents of the wrong size": mlp_request("resnet", raw=b"\0" * 5),
    "an unknown datatype": mlp_request("resnet", datatype="FLOAT32"),
    "an unknown version": pb.ModelInferRequest(model_name="resnet", model_version="7"),
}


@pytest.mark.parametrize("case", sorted(UNKNOWN_MODEL_REQUESTS))
async def test_an_unknown_model_is_not_found_whatever_inputs_come_with_it(tier: tuple[str, str], case: str) -> None:
    _, address = tier
    err = await refused(address, UNKNOWN_MODEL_REQUESTS[case])
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert "model 'resnet' is not served" in err.details() and "'mlp'" in err.details()  # and what is
    await serves_a_good_request(address)


async def test_a_ten_thousand_character_model_name_is_still_not_found(tier: tuple[str, str]) -> None:
    name, address = tier
    err = await refused(address, mlp_request(LONG_NAME))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    details = err.details()
    assert len(details.encode()) <= MAX_DETAILS_BYTES and details.startswith("model 'xxxxx")
    if name != "cloud":  # NOTE: the cloud master's NOT_FOUND is fogline.core.routing.dispatch's, cut short by the status alone
        assert "x…' (10000 characters) is not served" in details and len(details) < 400
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name=LONG_NAME),
                                                                          timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND and "x…' (10000 characters)" in info.value.details()
    await serves_a_good_request(address)


async def test_raw_and_typed_contents_for_one_input_are_invalid_argument(tier: tuple[str, str]) -> None:
    _, address = tier
    err = await refused(address, mlp_request(typed=[1.0] * 64))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input' of model 'mlp': contents must not be set when the request has raw_input_contents" in (
        err.details())
    await serves_a_good_request(address)


def with_parameter(key: str, kind: str, value: object, msg: pb.ModelInferRequest | None = None) -> pb.ModelInferRequest:
    """``msg`` (a good mlp request) with parameter ``key`` set to ``value`` in its field ``kind``."""
    msg = msg or mlp_request()
    setattr(msg.parameters[key], kind, value)
    return msg


async def stream(address: str, requests: list[pb.ModelInferRequest]) -> dict[str, pb.ModelStreamInferResponse]:
    """The replies of one ModelStreamInfer stream carrying ``requests``, by request id."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=10)
        for request in requests:
            await call.write(request)
        await call.done_writing()
        return {reply.infer_response.id: reply async for reply in call}


BAD_TIMEOUTS = [("int64_param", 0, "int64_param 0"), ("int64_param", -250, "int64_param -250"),
                ("string_param", "250", "string_param '250'"), ("double_param", float("nan"), "double_param nan")]


async def test_a_streams_timeout_that_is_not_a_positive_number_is_invalid_argument(tier: tuple[str, str]) -> None:
    _, address = tier
    bad = [with_parameter("fogline.timeout_ms", kind, value, encode_request("mlp", GOOD, request_id=f"bad-{i}"))
           for i, (kind, value, _) in enumerate(BAD_TIMEOUTS)]
    good = with_parameter("fogline.timeout_ms", "int64_param", 5000, encode_request("mlp", GOOD, request_id="good"))
    replies = await stream(address, [*bad, good])
    for i, (_, _, received) in enumerate(BAD_TIMEOUTS):
        reply = replies[f"bad-{i}"]
        assert reply.infer_response.parameters["fogline.code"].string_param == "INVALID_ARGUMENT"
        assert f"parameter 'fogline.timeout_ms' must be a positive number (an int64_param); got {received}" in (
            reply.error_message)
    assert not replies["good"].error_message  # the same stream, still serving
    await serves_a_good_request(address)


@pytest.mark.parametrize(("key", "kind", "value", "received"), [
    ("fogline.tier", "int64_param", 1, "int64_param 1"),
    ("fogline.tier", "bool_param", True, "bool_param True"),
    ("fogline.session", "double_param", 0.5, "double_param 0.5"),
])
async def test_a_fogline_parameter_of_the_wrong_type_is_invalid_argument_naming_it(
        master: str, key: str, kind: str, value: object, received: str) -> None:
    err = await refused(master, with_parameter(key, kind, value))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"parameter {key!r} must be a string_param; got {received}" in err.details()
    await serves_a_good_request(master)


async def test_the_cloud_master_refuses_a_region_of_the_wrong_type(sample_models: Path) -> None:
    async with cloud_master() as cloud, region(sample_models, cloud=cloud):
        err = await refused(cloud.endpoints["grpc"], with_parameter("fogline.region", "int64_param", 7))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "parameter 'fogline.region' must be a string_param; got int64_param 7" in err.details()
        await serves_a_good_request(cloud.endpoints["grpc"])


async def test_the_known_models_an_error_lists_stop_at_twenty(edge: EdgeMaster) -> None:
    edge.router.catalog = Catalog(CatalogEntry(name=f"alias-{i:02}", placement=Placement.DEVICE, device_model="mlp")
                                  for i in range(25))
    err = await refused(edge.endpoints["grpc"], mlp_request("resnet"))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert err.details().endswith("available: ['alias-00', 'alias-01', 'alias-02', 'alias-03', 'alias-04', "
                                  "'alias-05', 'alias-06', 'alias-07', 'alias-08', 'alias-09', 'alias-10', 'alias-11', "
                                  "'alias-12', 'alias-13', 'alias-14', 'alias-15', 'alias-16', 'alias-17', 'alias-18', "
                                  "'alias-19'] and 7 more")
    await serves_a_good_request(edge.endpoints["grpc"])


async def test_a_long_input_name_is_echoed_cut_short(tier: tuple[str, str]) -> None:
    _, address = tier
    err = await refused(address, mlp_request(name=LONG_NAME))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'mlp' takes inputs ['input']; missing ['input'], unknown ['xxxxx" in err.details()
    assert "x…' (10000 characters)]" in err.details() and len(err.details()) < 400
    await serves_a_good_request(address)


# --- payloads at exactly the message limit ---------------------------------------------------------

CNN_BATCH = np.zeros((20, 3, 64, 64), np.float32)  # 960 KiB of the 1 MiB


def at_size(size: int, model: str = "cnn") -> dict[str, Any]:
    """``Client.infer`` arguments for a real cnn batch whose request is exactly ``size`` bytes, padded
    with a parameter no tier reads."""
    def encoded(pad: int) -> int:
        return encode_request(model, {"input": CNN_BATCH}, parameters={"pad": "p" * pad}).ByteSize()
    pad = size - encoded(0)
    while encoded(pad) > size:  # the pad's own length prefix grows with it
        pad -= 1
    assert encoded(pad) == size
    return {"model": model, "inputs": {"input": CNN_BATCH}, "parameters": {"pad": "p" * pad}}


def breakers(status: dict[str, Any], members: str) -> dict[str, dict[str, Any]]:
    """The breaker of each of ``members`` ("devices", "edges") in a ``/v1/status``."""
    return {m["id"]: m["breaker"] for m in status[members]}


def all_closed(states: dict[str, dict[str, Any]]) -> bool:
    """Every circuit closed and none ever saw a failure."""
    return all(b["state"] == "closed" and b["consecutive_failures"] == 0 and b["trips"] == 0
               for b in states.values())


@pytest.mark.parametrize("streams", [True, False], ids=["stream", "unary"])
async def test_payloads_at_exactly_the_limit_are_served_and_never_open_a_devices_circuit(
        sample_models: Path, streams: bool) -> None:
    async with region(sample_models, devices=2, streams=streams) as edge, Client(edge.endpoints["grpc"]) as client:
        at_limit = at_size(MAX_MESSAGE_BYTES)
        # Concurrent with small requests on the same streams: an oversized message would end a stream.
        results = await asyncio.gather(*(client.infer(**at_limit) for _ in range(4)),
                                       *(client.infer("mlp", GOOD) for _ in range(8)))
        assert {(r.tier, r.route) for r in results} == {("device", "placement")}
        assert all(r.outputs["logits"].shape == (20, 10) for r in results[:4])
        for _ in range(3):
            with pytest.raises(PayloadTooLargeError, match="larger than max") as info:
                await client.infer(**at_size(MAX_MESSAGE_BYTES + 1))
            assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED  # the edge's own limit, before any device
        assert client.breakers[edge.endpoints["grpc"]].closed  # nor does it count against the edge
        status = await get_json(f"http://{edge.endpoints['http']}/v1/status")
        assert set(breakers(status, "devices")) == {"dev-0", "dev-1"} and all_closed(breakers(status, "devices"))
        assert (await client.infer("mlp", GOOD)).tier == "device"


async def test_a_catalog_name_that_takes_a_payload_over_the_limit_is_refused_at_the_edge(sample_models: Path) -> None:
    async with region(sample_models, devices=2) as edge, Client(edge.endpoints["grpc"]) as client:
        edge.router.catalog = Catalog([CatalogEntry(name="c", placement=Placement.DEVICE, device_model="cnn")])
        for _ in range(3):
            with pytest.raises(PayloadTooLargeError, match="once addressed to the model 'cnn' that serves it, over "
                                                           "the 1048576-byte message limit; send a smaller batch") as info:
                await client.infer(**at_size(MAX_MESSAGE_BYTES, model="c"))
            assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert client.breakers[edge.endpoints["grpc"]].closed
        status = await get_json(f"http://{edge.endpoints['http']}/v1/status")
        assert all_closed(breakers(status, "devices"))
        assert (await client.infer(**at_size(MAX_MESSAGE_BYTES - 64, model="c"))).node in {"dev-0", "dev-1"}


async def test_the_cloud_master_forwards_payloads_at_exactly_the_limit(sample_models: Path) -> None:
    async with cloud_master() as cloud, region(sample_models, devices=2, cloud=cloud) as edge, \
            Client(cloud.endpoints["grpc"]) as client:
        at_limit = at_size(MAX_MESSAGE_BYTES)
        results = await asyncio.gather(*(client.infer(**at_limit) for _ in range(4)),
                                       *(client.infer("mlp", GOOD) for _ in range(8)))
        assert {(r.tier, r.parameters["fogline.region"]) for r in results} == {("device", "r")}
        cloud_status = await get_json(f"http://{cloud.endpoints['http']}/v1/status")
        edge_status = await get_json(f"http://{edge.endpoints['http']}/v1/status")
        assert all_closed(breakers(cloud_status, "edges")) and all_closed(breakers(edge_status, "devices"))
        assert (await client.infer("mlp", GOOD)).tier == "device"


# --- a cascade fed NaN or inf ----------------------------------------------------------------------

DIGIT = {"input": np.zeros((1, 64), np.float32)}


@dataclass
class Cascade:
    cloud: CloudMaster
    worker: GpuWorker
    edge: EdgeMaster


@pytest.fixture
async def cascade(digits_models: Path) -> AsyncIterator[Cascade]:
    """The digits cascade: a cloud master with its catalog, a GPU worker holding digits-large, and an
    edge master with a device node holding digits-small."""
    async with cloud_master(catalog=digits_models / CATALOG_FILE, topology_refresh_s=0.1) as cloud, \
            gpu_worker(digits_models, models=("digits-large",), master=cloud.endpoints["control"]) as worker, \
            region(digits_models, cloud=cloud, model_names=("digits-small",)) as edge:
        await until(lambda: "gpu-a" in edge.workers.endpoints and "digits" in edge.router.catalog.entries)
        async with Client(worker.endpoints["grpc"]) as client:  # its first run may be slow: not in a test
            await client.infer("digits-large", DIGIT)
        yield Cascade(cloud, worker, edge)


UNJUDGEABLE = {"nan": np.full((1, 64), np.nan, np.float32), "inf": np.full((1, 64), np.inf, np.float32),
               "a nan row in a batch": np.vstack([np.zeros((2, 64)), np.full((1, 64), np.nan)]).astype(np.float32)}


def no_traceback_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return not [r for r in caplog.records if r.name.startswith("fogline") and r.exc_info]


@pytest.mark.parametrize("case", sorted(UNJUDGEABLE))
async def test_nan_or_inf_inputs_to_a_cascade_escalate_and_are_degraded_when_the_cloud_is_down(
        cascade: Cascade, case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    inputs = {"input": UNJUDGEABLE[case]}
    async with Client(cascade.edge.endpoints["grpc"]) as client:
        hard = await client.infer("digits", inputs)
        assert (hard.tier, hard.node, hard.route, hard.degraded) == ("cloud", "gpu-a", "cascade-hard", False)
        assert (await client.infer("digits", DIGIT)).outputs["probs"].shape == (1, 10)
        await cascade.worker._server.stop(None)  # the cloud tier goes down under the edge's feet
        for _ in range(3):  # the worker is gone: the device's answer at once, flagged, never an error
            degraded = await client.infer("digits", inputs)
            assert (degraded.tier, degraded.node, degraded.route, degraded.degraded) == (
                "device", "dev-0", "degraded", True)
            assert np.isnan(degraded.outputs["probs"][-1]).all()  # the device's own answer
        assert (await client.infer("digits", DIGIT)).tier == "device"
    assert no_traceback_logged(caplog)
