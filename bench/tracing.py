"""``python -m bench.tracing``: what OpenTelemetry tracing costs. The same region twice, side by side — an
edge master and two device nodes serving ``mlp`` — once with tracing off (no ``OTEL_*`` variables) and
once with it on: every request sampled (``always_on``) and exported over OTLP to a receiver in this
process. Closed-loop load through each edge at concurrency 1 and 32, the two alternated within each
repetition so that the machine's noise falls on both alike; medians over repetitions, printed as a
markdown table (nothing is written).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.load import Request, Target, Window
from bench.report import PERF_DOC, machine_facts, report_command, table, write_section
from bench.results import Measurement
from bench.servers import Server, Servers
from bench.tls import CONCURRENCIES, MODEL, measure, start_region
from fogline.adapters.grpc.codec import encode_request
from fogline.local.samples import build_sample_repository

MODES = ("off", "on")


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that counts the spans exported to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans = 0

    def Export(self, request: Any, context: Any) -> Any:
        count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def receiver() -> Iterator[tuple[SpanCounter, str]]:
    """A :class:`SpanCounter` served on 127.0.0.1:0, and its address; stopped after the block."""
    counter = SpanCounter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield counter, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the block: the processes started in it inherit them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def tracing_env(address: str) -> dict[str, str]:
    """The variables of a process that samples every request and exports its spans to ``address``."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{address}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_SAMPLER": "always_on", "OTEL_BSP_SCHEDULE_DELAY": "200"}


def pids(edge: Server, devices: list[Server]) -> dict[str, int]:
    return {"edge": edge.pid, **{f"device{i}": d.pid for i, d in enumerate(devices)}}


def render(results: dict[tuple[str, int], list[Measurement]], spans: int, command: str, date: str,
           reps: int) -> str:
    """The markdown section: a row per mode and concurrency, then the cost of tracing at each concurrency."""
    rows, cost = [], {}
    for concurrency in CONCURRENCIES:
        medians = {}
        for mode in MODES:
            ms = results[(mode, concurrency)]
            medians[mode] = statistics.median(m.throughput for m in ms)
            rows.append([f"tracing {mode}", str(concurrency), f"{medians[mode]:.0f}",
                         f"{statistics.median(m.percentile_ms(50) for m in ms):.2f}",
                         f"{statistics.median(m.percentile_ms(99) for m in ms):.2f}",
                         str(sum(m.errors for m in ms))])
        cost[concurrency] = 1 - medians["on"] / medians["off"]
    lines = ["## Tracing on against off", "",
             f"`{command}`, {date}: an edge master and two device nodes serving `{MODEL}`, client → edge → "
             "devices, without `OTEL_*` variables and with every request sampled (`always_on`) and exported "
             f"over OTLP/gRPC to a local receiver; closed-loop load; medians of {reps} alternated repetitions.", "",
             table(["path", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"], rows, left=2), ""]
    lines += [f"- concurrency {c}: tracing on costs {share:.0%} of the throughput." for c, share in cost.items()]
    lines += [f"- spans the receiver got: {spans} (beyond `OTEL_BSP_MAX_QUEUE_SIZE` waiting, the SDK drops spans).", "",
              "Each traced request makes 6 spans (edge: server, route, attempt; device: server, queue, "
              "batch), recorded in the request's path and exported in batches by a background thread."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=4.0, help="measured window per run")
    parser.add_argument("--out", type=Path, default=PERF_DOC, help=f"report to update (default {PERF_DOC})")
    args = parser.parse_args(argv)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine_facts()
    with (tempfile.TemporaryDirectory(prefix="fogline-tracing-") as tmp, Servers(Path(tmp)) as servers,
          receiver() as (counter, address)):
        models = build_sample_repository(Path(tmp) / "models")
        off_edge, off_devices = start_region(servers, models, "off", {})
        with environment(tracing_env(address)):
            on_edge, on_devices = start_region(servers, models, "on", {})
        targets = {"off": Target("off", off_edge.grpc, pids(off_edge, off_devices)),
                   "on": Target("on", on_edge.grpc, pids(on_edge, on_devices))}
        request = Request(MODEL, encode_request(MODEL, {"input": np.zeros((1, 64), np.float32)}).SerializeToString())
        results = asyncio.run(measure(targets, request, args.reps, Window(warmup_s=1.0, duration_s=args.duration_s)))
        spans = counter.spans
    section = render(results, spans, report_command(argv, module="bench.tracing"), date, args.reps)
    write_section(args.out, "tracing", section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
