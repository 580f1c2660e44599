"""What the benchmark measures, and in which order.

Every server is started once and stays up; each repetition then measures every case in turn
(raw ORT first, then each path), so slow drifts in the machine's background load spread over all
cases instead of biasing one of them.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.load import Request, Target, Window, call_once, run_load
from bench.raw_ort import load_sessions, measure_runs, random_inputs, repeat_rows
from bench.results import ALL_CORES, DEVICE, DEVICE_NO_BATCHING, ECHO, EDGE, ORT, ORT_BATCHED, Case, RawSetup, Results
from bench.servers import Server, Servers, wait_registered
from fogline.adapters.grpc.codec import encode_request
from fogline.adapters.runtime.onnx import OnnxRuntimeModel
from fogline.core.serving.repository import load_model
from fogline.local.samples import build_sample_repository

MODELS = ("mlp", "cnn")
CONCURRENCIES = (1, 32)
BATCHING_MODEL = "cnn"
BATCHING_CONCURRENCIES = (32, 64)
RAW_BATCH_SIZES = (1, 4, 8, 16, 32)
REGION = "bench"


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure."""

    reps: int
    load: Window
    """Each load-generator window (every path, every concurrency)."""
    raw_single: Window
    """Raw ORT, one request per run."""
    raw_batch: Window
    """Raw ORT, each batch size."""

    @classmethod
    def full(cls) -> Settings:
        return cls(reps=3, load=Window(1.0, 4.0), raw_single=Window(0.5, 3.0), raw_batch=Window(0.3, 1.5))

    @classmethod
    def quick(cls) -> Settings:
        return cls(reps=1, load=Window(0.3, 1.0), raw_single=Window(0.2, 0.5), raw_batch=Window(0.1, 0.3))


_started = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


def without_batching(repository: Path, model: str, destination: Path) -> Path:
    """A copy of ``repository`` in which ``model`` has ``max_batch_size = 0``: each request runs alone."""
    shutil.copytree(repository, destination)
    config = destination / model / "config.toml"
    text, replaced = re.subn(r"(?m)^max_batch_size\s*=.*$", "max_batch_size = 0", config.read_text())
    if replaced != 1:
        raise RuntimeError(f"{config}: expected one top-level max_batch_size line, found {replaced}")
    config.write_text(text)
    if load_model(destination / model).max_batch_size != 0:
        raise RuntimeError(f"{config}: batching is still on after the rewrite")
    return destination


@dataclass
class Stack:
    """The servers of one run, as load-generator targets."""

    device: Target
    edge: Target
    device_no_batching: Target
    echo: dict[str, Target]
    """By model: an echo server answering with that model's real response."""


def _device_target(name: str, device: Server) -> Target:
    return Target(name, device.grpc, {"device": device.pid}, batch_status_url=f"{device.http}/v1/status")


async def start_stack(servers: Servers, workdir: Path, repository: Path, requests: dict[str, Request]) -> Stack:
    """Start every server on ``repository`` (and a copy without batching); wait until each can serve."""
    no_batching = without_batching(repository, BATCHING_MODEL, workdir / "models-no-batching")
    progress("starting edge master and device nodes")
    edge = servers.edge("edge", REGION)
    device = servers.device("device", REGION, repository)
    device_no_batching = servers.device("device-no-batching", REGION, no_batching, only=[BATCHING_MODEL])
    servers.wait_ready(edge)
    attached = servers.device("device-behind-edge", REGION, repository, master=edge)
    servers.wait_ready(device, device_no_batching, attached)
    wait_registered(edge, attached)

    progress("starting echo servers with each model's real response")
    echo_servers = {}
    for model, request in requests.items():
        response_file = workdir / f"{model}.response.bin"
        response_file.write_bytes(await call_once(device.grpc, request))
        echo_servers[model] = servers.echo(f"echo-{model}", response_file)
    servers.wait_ready(*echo_servers.values())
    return Stack(
        device=_device_target(DEVICE, device),
        edge=Target(EDGE, edge.grpc, {"edge": edge.pid, "device": attached.pid},
                    batch_status_url=f"{attached.http}/v1/status"),
        device_no_batching=_device_target(DEVICE_NO_BATCHING, device_no_batching),
        echo={model: Target(ECHO, s.grpc, {"echo": s.pid}) for model, s in echo_servers.items()},
    )


def load_cases(stack: Stack) -> Iterator[tuple[Case, Target]]:
    """Every (case, target) the load generator measures, in order."""
    for model in MODELS:
        for concurrency in CONCURRENCIES:
            for target in (stack.device, stack.edge, stack.echo[model]):
                yield Case(model, target.name, concurrency), target
    for concurrency in BATCHING_CONCURRENCIES:
        if concurrency not in CONCURRENCIES:
            yield Case(BATCHING_MODEL, DEVICE, concurrency), stack.device
        yield Case(BATCHING_MODEL, DEVICE_NO_BATCHING, concurrency), stack.device_no_batching


def measure_raw(results: Results, model: str, sessions: dict[RawSetup, OnnxRuntimeModel],
                settings: Settings) -> None:
    """Raw ORT for ``model``: single-request runs on all cores, then every setup at every batch size."""
    one_row = random_inputs(sessions[ALL_CORES].spec, 1)
    results.add(Case(model, ORT, setup=ALL_CORES), measure_runs(sessions[ALL_CORES], one_row, 1, settings.raw_single))
    for setup, session in sessions.items():
        for batch in RAW_BATCH_SIZES:
            feeds = repeat_rows(one_row, batch)
            results.add(Case(model, ORT_BATCHED, batch=batch, setup=setup),
                        measure_runs(session, feeds, batch, settings.raw_batch, parallel=setup.parallel))


async def run_suite(settings: Settings, servers: Servers, workdir: Path) -> Results:
    """Start the servers, measure every case ``settings.reps`` times, and return the measurements."""
    repository = build_sample_repository(workdir / "models")
    sessions = {model: load_sessions(load_model(repository / model)) for model in MODELS}
    requests = {model: Request(model, encode_request(model, random_inputs(s[ALL_CORES].spec, 1)).SerializeToString())
                for model, s in sessions.items()}
    stack = await start_stack(servers, workdir, repository, requests)
    cases = list(load_cases(stack))
    results = Results()
    for rep in range(1, settings.reps + 1):
        for model, model_sessions in sessions.items():
            progress(f"rep {rep}/{settings.reps}: raw ONNX Runtime, {model}")
            measure_raw(results, model, model_sessions, settings)
        for case, target in cases:
            progress(f"rep {rep}/{settings.reps}: {case.model} via {case.path}, concurrency {case.concurrency}")
            measurement = await run_load(target, requests[case.model], case.concurrency, settings.load)
            if measurement.errors:
                progress(f"  {measurement.errors} errors, first: {measurement.first_error}")
            results.add(case, measurement)
    return results
