"""Tracing across real gRPC hops in this process: SDK -> edge master -> device node, exported over OTLP
to a real OTLP gRPC receiver on port 0. The context travels in metadata on unary hops and as a request
parameter on the edge's multiplexed stream; with tracing off nothing is exported and answers are the same
bytes."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from device_node import DeviceNode, DeviceSettings
from edge_master import EdgeMaster, EdgeSettings
from fogline import Client
from fogline._proto import inference_pb2 as pb
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.adapters import tracing
from fogline.adapters.grpc.codec import encode_request
from fogline.core.observe.spans import NO_SPANS, PROCESS_SPANS
from fogline.core.serving.batching import BatchingSettings, DynamicBatcher
from tests.polling import until

X = {"input": np.ones((1, 64), np.float32)}
INFER = "/inference.GRPCInferenceService/ModelInfer"
KINDS = {1: "internal", 2: "server", 3: "client"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver got it: ids in hex, attributes decoded, its resource's service.name."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: str
    attributes: dict[str, Any]
    service: str
    error: bool


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector: keeps every span exported to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.endpoint = ""

    def Export(self, request: Any, context: Any) -> Any:
        received = [ReceivedSpan(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                 KINDS.get(s.kind, str(s.kind)), _attributes(s.attributes),
                                 str(_attributes(rs.resource.attributes).get("service.name", "")),
                                 s.status.code == 2)
                    for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        with self._lock:
            self._spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        """What was received (of ``trace_id`` only, if given)."""
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]


def start_receiver() -> tuple[OtlpReceiver, grpc.Server]:
    """An :class:`OtlpReceiver` served on 127.0.0.1:0 (its ``endpoint``), with threads of its own."""
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    receiver.endpoint = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    return receiver, server


def export_to(monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> None:
    """The OTEL_* variables of a process exporting to ``receiver`` fast."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{receiver.endpoint}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)


def check_tree(spans: list[ReceivedSpan]) -> ReceivedSpan:
    """Every span's parent is in the trace and there is one root; that root."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert len(roots) == 1, [(s.name, s.service) for s in roots]
    orphans = [(s.name, s.parent_id) for s in spans if s.parent_id and s.parent_id not in ids]
    assert not orphans, orphans
    return roots[0]


def one(spans: list[ReceivedSpan], name: str, **attributes: Any) -> ReceivedSpan:
    """The one span named ``name`` with ``attributes``."""
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in spans])
    return found[0]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver, server = start_receiver()
    yield receiver
    server.stop(None)


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> Iterator[tracing.OtelSpans]:
    """This process traced as a fogline process is, exporting to ``receiver``; off again after."""
    export_to(monkeypatch, receiver)
    spans = tracing.setup("fogline-test")
    previous = PROCESS_SPANS.install(spans)
    yield spans
    PROCESS_SPANS.install(previous)
    spans.close()


@pytest.fixture(params=[True, False], ids=["stream", "unary"])
async def region(request: pytest.FixtureRequest, sample_models: Path) -> AsyncIterator[EdgeMaster]:
    """An edge master with one device node, forwarding over a stream or over unary calls."""
    master = EdgeMaster(EdgeSettings(edge_id="e", region="r", upstream_streams=request.param))
    await master.start()
    node = DeviceNode(DeviceSettings(model_repository=sample_models, node_id="dev-t", region="r",
                                     master=master.endpoints["control"]))
    await node.start()
    await until(lambda: "dev-t" in master.pool.endpoints)
    yield master
    await node.drain()
    await master.drain()


async def test_one_trace_spans_the_sdk_the_edge_and_the_device(traced: tracing.OtelSpans, receiver: OtlpReceiver,
                                                               region: EdgeMaster) -> None:
    async with Client(region.endpoints["grpc"]) as client:
        result = await client.infer("mlp", X)
    assert len(result.trace_id) == 32 and result.node == "dev-t"
    streamed = region.settings.upstream_streams
    device_server = "inference.GRPCInferenceService/" + ("ModelStreamInfer" if streamed else "ModelInfer")
    spans = await until(lambda: (s := receiver.spans(result.trace_id)) and any(x.name == "fogline.batch" for x in s)
                        and len(s) >= 8 and s, what="the trace's spans")
    root = check_tree(spans)
    assert (root.name, root.kind, root.attributes["fogline.route"]) == ("fogline.infer", "client", "placement")
    by_id = {s.span_id: s for s in spans}
    sdk_attempt = one(spans, "inference.GRPCInferenceService/ModelInfer", **{"fogline.endpoint": client.endpoints[0]})
    assert by_id[sdk_attempt.parent_id] is root and sdk_attempt.kind == "client"
    route, attempt = one(spans, "fogline.route"), one(spans, "fogline.attempt")
    edge_server = by_id[route.parent_id]
    assert (edge_server.name, edge_server.kind) == ("inference.GRPCInferenceService/ModelInfer", "server")
    assert edge_server.parent_id == sdk_attempt.span_id
    assert route.attributes.items() >= {"fogline.tier": "device", "fogline.node": "dev-t", "fogline.route": "placement",
                                        "fogline.attempts": 1, "fogline.code": "OK"}.items()
    assert by_id[attempt.parent_id] is route and attempt.kind == "client"
    assert attempt.attributes["fogline.endpoint"] == "dev-t" and attempt.attributes["fogline.code"] == "OK"
    device = one(spans, device_server, **{"fogline.model": "mlp"}) if streamed else \
        next(s for s in spans if s.parent_id == attempt.span_id)
    assert (device.name, device.kind, device.parent_id) == (device_server, "server", attempt.span_id)
    queue, batch = one(spans, "fogline.queue"), one(spans, "fogline.batch")
    assert queue.parent_id == batch.parent_id == device.span_id
    assert batch.attributes["fogline.batch.size"] >= 1 and batch.attributes["fogline.batch.rows"] >= 1
    assert device.attributes["fogline.code"] == "OK" and device.attributes["fogline.model_version"] == "1"


async def test_a_call_carrying_traceparent_metadata_continues_its_trace(traced: tracing.OtelSpans,
                                                                       receiver: OtlpReceiver,
                                                                       device: DeviceNode) -> None:
    """As a tritonclient call with the caller's context in its metadata reaches a node."""
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metadata = (("traceparent", f"00-{trace_id}-{parent}-01"), ("tracestate", "vendor=1"))
    request = encode_request("mlp", X).SerializeToString()
    async with grpc.aio.insecure_channel(device.endpoints["grpc"]) as channel:
        await channel.unary_unary(INFER)(request, metadata=metadata)
    spans = await until(lambda: len(s := receiver.spans(trace_id)) >= 3 and s, what="the device's spans")
    server = one(spans, "inference.GRPCInferenceService/ModelInfer")
    assert (server.parent_id, server.kind, server.attributes["fogline.model"]) == (parent, "server", "mlp")


# NOTE: in a process of its own: tritonclient's protobuf definitions of inference.* collide with ours.
TRITON_CALL = """
import sys, numpy as np, tritonclient.grpc as triton
client = triton.InferenceServerClient(sys.argv[1])
tensor = triton.InferInput("input", [1, 64], "FP32")
tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
client.infer("mlp", [tensor], headers={"traceparent": sys.argv[2]})
client.close()
"""


async def test_a_real_tritonclient_call_with_traceparent_in_its_headers_continues_its_trace(
        traced: tracing.OtelSpans, receiver: OtlpReceiver, device: DeviceNode) -> None:
    trace_id, parent = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", TRITON_CALL, device.endpoints["grpc"], f"00-{trace_id}-{parent}-01"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    spans = await until(lambda: len(s := receiver.spans(trace_id)) >= 3 and s, what="the device's spans")
    server = one(spans, "inference.GRPCInferenceService/ModelInfer")
    assert (server.parent_id, server.kind, server.attributes["fogline.code"]) == (parent, "server", "OK")
    assert {s.name for s in spans if s.parent_id == server.span_id} == {"fogline.queue", "fogline.batch"}


async def test_a_stream_request_carrying_traceparent_as_a_parameter_continues_its_trace(
        traced: tracing.OtelSpans, receiver: OtlpReceiver, device: DeviceNode) -> None:
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    request = encode_request("mlp", X, request_id="s1", parameters={"traceparent": f"00-{trace_id}-{parent}-01"})
    async with grpc.aio.insecure_channel(device.endpoints["grpc"]) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        await call.write(request)
        await call.done_writing()
        replies = [r async for r in call]
    assert [r.infer_response.id for r in replies] == ["s1"] and not replies[0].error_message
    spans = await until(lambda: len(s := receiver.spans(trace_id)) >= 3 and s, what="the device's spans")
    assert one(spans, "inference.GRPCInferenceService/ModelStreamInfer").parent_id == parent


async def test_a_failed_request_marks_its_spans_with_the_error_code(traced: tracing.OtelSpans,
                                                                   receiver: OtlpReceiver,
                                                                   region: EdgeMaster) -> None:
    async with Client(region.endpoints["grpc"]) as client:
        with pytest.raises(Exception, match="expects datatype FP32"):
            await client.infer("mlp", {"input": np.ones((1, 64), np.int32)})
    spans = await until(lambda: {"fogline.infer", "fogline.route"} <= {s.name for s in receiver.spans()}
                        and receiver.spans(), what="the failed trace")
    root = one(spans, "fogline.infer")
    assert root.error and root.attributes["fogline.code"] == "INVALID_ARGUMENT"
    route = one(spans, "fogline.route")
    assert route.error and route.attributes["fogline.code"] == "INVALID_ARGUMENT"


async def test_with_tracing_off_nothing_is_exported_and_answers_are_the_same_bytes(
        monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver, region: EdgeMaster) -> None:
    export_to(monkeypatch, receiver)
    spans = tracing.setup("fogline-test")  # configured, but not installed: the process traces nothing
    request = encode_request("mlp", {"input": np.arange(64, dtype=np.float32)[None, :]}, request_id="same")
    async with grpc.aio.insecure_channel(region.endpoints["grpc"]) as channel:
        call = channel.unary_unary(INFER)
        assert PROCESS_SPANS.installed is NO_SPANS
        async with Client(region.endpoints["grpc"]) as client:
            assert (await client.infer("mlp", X)).trace_id == ""
        off = await call(request.SerializeToString())
        previous = PROCESS_SPANS.install(spans)
        try:
            on = await call(request.SerializeToString(), metadata=(("traceparent", f"00-{'ab' * 16}-{'cd' * 8}-01"),))
        finally:
            PROCESS_SPANS.install(previous)
        spans.close()  # exports what was recorded, now
    canonical = [pb.ModelInferResponse.FromString(b).SerializeToString(deterministic=True) for b in (off, on)]
    assert canonical[0] == canonical[1]
    if not region.settings.upstream_streams:
        assert off == on  # NOTE: through a stream the raw bytes differ anyway: the device's reply has the stream's tag
    assert pb.ModelInferResponse.FromString(off).id == "same"
    received = receiver.spans()
    assert received and {s.trace_id for s in received} == {"ab" * 16}, [(s.name, s.trace_id[:4], s.span_id[:4], s.parent_id[:4], s.attributes) for s in received]


def test_tracing_is_on_only_when_an_exporter_is_configured() -> None:
    assert not tracing.configured({})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"})
    assert tracing.configured({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.configured({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert not tracing.configured({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    with pytest.raises(tracing.TracingError, match="zipkin"):
        tracing.setup("x", environ={"OTEL_TRACES_EXPORTER": "zipkin"})


class RecordingSpans:
    """A fake of the core's ``Spans`` that keeps what is recorded; the current context is a context variable."""

    enabled = True

    def __init__(self) -> None:
        self.records: list[tuple[str, object, int, int, dict[str, Any]]] = []
        self.clock_ns = 0

    def span(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the batcher records finished spans only")

    def current(self) -> object | None:
        return REQUEST.get()

    def record(self, name: str, parent: object | None, start_ns: int, end_ns: int,
               attributes: Any = None, *, error: tuple[str, str] | None = None) -> None:
        self.records.append((name, parent, start_ns, end_ns, dict(attributes or {})))

    def now_ns(self) -> int:
        self.clock_ns += 1
        return self.clock_ns

    def close(self) -> None:
        return None


REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


async def test_a_batch_of_three_traced_requests_records_each_its_queue_wait_and_the_batch_run() -> None:
    release = asyncio.Event()

    async def hold(delay_s: float) -> None:
        await release.wait()

    spans = RecordingSpans()
    batcher = DynamicBatcher("m", lambda feeds: {"y": feeds["x"] * 2}, BatchingSettings(
        max_batch_size=8, max_queue_delay_us=1_000_000), sleep=hold, spans=spans)

    async def request(name: str | None, rows: int) -> Any:
        REQUEST.set(name)
        return await batcher.infer({"x": np.ones((rows, 2), np.float32)})

    tasks = [asyncio.create_task(request(name, rows)) for name, rows in (("a", 1), ("b", 2), (None, 1), ("c", 1))]
    await until(lambda: batcher.queue_depth == 4)
    release.set()
    await asyncio.gather(*tasks)
    assert batcher.stats.batches == 1
    by_parent = {parent: sorted((name, start, end, attrs) for name, p, start, end, attrs in spans.records if p == parent)
                 for parent in ("a", "b", "c")}
    assert {p for _, p, *_ in spans.records} == {"a", "b", "c"}  # the untraced request records nothing
    for parent, ((batch, b_start, b_end, b_attrs), (queue, q_start, q_end, _)) in by_parent.items():
        assert (batch, queue) == ("fogline.batch", "fogline.queue"), parent
        assert q_start < q_end == b_start < b_end
        assert b_attrs == {"fogline.model": "m", "fogline.batch.size": 4, "fogline.batch.rows": 5}
