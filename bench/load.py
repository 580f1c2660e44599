"""The load generator: N coroutines in a closed loop over one grpc.aio channel.

The same generator loads the device node, the edge master and the echo server. Requests are
serialized once up front and sent as bytes (``channel.unary_unary`` without serializers, replies
not parsed), so the client's CPU cost per request is small and identical for every target.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import grpc

from bench.cpu import CpuSnapshot, cpu_delta, cpu_snapshot
from bench.results import Measurement
from bench.servers import get_json
from fogline.adapters.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, channel_options

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
CALL_TIMEOUT_S = 30.0
CLIENT = "client"


@dataclass(frozen=True)
class Target:
    """Where load goes: a V2 gRPC address and the processes serving it (role -> pid).

    ``batch_status_url`` is the ``/v1/status`` of the device that batches the requests, if any:
    the mean batch size is read from it over the window.
    """

    name: str
    address: str
    pids: dict[str, int]
    batch_status_url: str | None = None
    credentials: grpc.ChannelCredentials | None = None
    """TLS to the target (None: plaintext)."""

    def channel(self) -> grpc.aio.Channel:
        """A channel to the target: plaintext, or TLS with ``credentials``."""
        options = channel_options(DEFAULT_MAX_MESSAGE_BYTES)
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        return grpc.aio.secure_channel(self.address, self.credentials, options=options)


@dataclass(frozen=True)
class Request:
    """A serialized ModelInferRequest for ``model``."""

    model: str
    payload: bytes


@dataclass(frozen=True)
class Window:
    """Load for ``warmup_s`` unmeasured, then measure for ``duration_s``."""

    warmup_s: float
    duration_s: float


@dataclass
class _Recorder:
    """Latencies and errors of the requests completing inside [start, end)."""

    start: float
    end: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def done(self, sent: float, finished: float) -> None:
        if self.start <= finished < self.end:
            self.latencies_s.append(finished - sent)

    def failed(self, finished: float, error: grpc.aio.AioRpcError) -> None:
        if self.start <= finished < self.end:
            self.errors += 1
            self.first_error = self.first_error or f"{error.code().name}: {error.details()}"


async def call_once(address: str, request: Request) -> bytes:
    """Send ``request`` once and return the serialized response (raises on failure)."""
    async with grpc.aio.insecure_channel(address, options=channel_options(DEFAULT_MAX_MESSAGE_BYTES)) as channel:
        reply: bytes = await channel.unary_unary(INFER_METHOD)(request.payload, timeout=CALL_TIMEOUT_S)
        return reply


async def _closed_loop(call: grpc.aio.UnaryUnaryMultiCallable, payload: bytes, recorder: _Recorder) -> None:
    """One client: send, wait for the reply, repeat, until the window ends."""
    while True:
        sent = time.perf_counter()
        if sent >= recorder.end:
            return
        try:
            await call(payload, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            recorder.failed(time.perf_counter(), exc)
            continue
        recorder.done(sent, time.perf_counter())


async def _batch_counts(url: str | None, model: str) -> tuple[int, int] | None:
    """(requests, batches) the device has run for ``model`` so far; None without a status URL."""
    if url is None:
        return None
    status = await asyncio.to_thread(get_json, url)
    stats = status["models"][model]
    return int(stats["requests"]), int(stats["batches"])


async def _observe(target: Target, model: str,
                   recorder: _Recorder) -> tuple[CpuSnapshot, CpuSnapshot, float | None]:
    """CPU snapshots at the window's start and end, and the mean batch size in between."""
    pids = {CLIENT: os.getpid(), **target.pids}
    await asyncio.sleep(max(recorder.start - time.perf_counter(), 0.0))
    before = cpu_snapshot(pids)
    counts_before = await _batch_counts(target.batch_status_url, model)
    await asyncio.sleep(max(recorder.end - time.perf_counter(), 0.0))
    after = cpu_snapshot(pids)
    counts_after = await _batch_counts(target.batch_status_url, model)
    mean_batch = None
    if counts_before is not None and counts_after is not None:
        batches = counts_after[1] - counts_before[1]
        mean_batch = (counts_after[0] - counts_before[0]) / batches if batches else None
    return before, after, mean_batch


async def run_load(target: Target, request: Request, concurrency: int, window: Window) -> Measurement:
    """Load ``target`` with ``concurrency`` closed-loop clients on one channel; measure one window."""
    async with target.channel() as channel:
        call = channel.unary_unary(INFER_METHOD)
        await call(request.payload, timeout=CALL_TIMEOUT_S)  # connected, and the target answers
        start = time.perf_counter() + window.warmup_s
        recorder = _Recorder(start, start + window.duration_s)
        observer = asyncio.create_task(_observe(target, request.model, recorder))
        await asyncio.gather(*(_closed_loop(call, request.payload, recorder) for _ in range(concurrency)))
        before, after, mean_batch = await observer
    cpu_s, other_cores = cpu_delta(before, after)
    return Measurement(count=len(recorder.latencies_s), duration_s=window.duration_s,
                       latencies_s=recorder.latencies_s, cpu_s=cpu_s, other_cores=other_cores,
                       errors=recorder.errors, first_error=recorder.first_error, mean_batch=mean_batch)
