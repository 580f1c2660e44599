"""``python -m bench.chaos``: the chaos suite's scenarios at higher load, measured.

Each scenario starts its own processes (edge masters, device nodes; a cloud master and a GPU worker
for the worker scenario), runs a closed-loop load of ``--concurrency`` requests through the SDK,
and injects one fault: a device killed, hung (SIGSTOP), made slow (a device with injected latency
joins), flapping, the GPU worker killed, an edge master killed. It records every request and writes
a table to the ``chaos`` section of docs/perf.md: requests sent and failed, p50/p99 before, during
and after the fault, the time until the fault was detected (a circuit opened, or traffic left the
faulty process) and until the system recovered (the process served again).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.report import PERF_DOC, report_command, table, write_section
from bench.servers import Server, Servers, get_json
from bench.suite import progress
from fogline.local import digits
from fogline.local.samples import build_sample_repository
from fogline.sdk.client import Client, InferResult

DEFAULT_OUT = PERF_DOC
EDGE_ARGS = ("--attempt-timeout-s", "0.3", "--member-ttl-s", "30")
TIMEOUT_S = 3.0


@dataclass
class Request:
    started: float
    finished: float
    result: InferResult | None
    error: str | None


@dataclass
class Recorder:
    """A closed-loop load: ``concurrency`` callers, each sending its next request when one returns."""

    call: Callable[[], Awaitable[InferResult]]
    concurrency: int
    requests: list[Request] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _caller(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result, error = await self.call(), None
            except Exception as exc:
                result, error = None, f"{type(exc).__name__}: {exc}"
            self.requests.append(Request(started, time.monotonic(), result, error))

    def start(self) -> asyncio.Future[list[None]]:
        return asyncio.gather(*(self._caller() for _ in range(self.concurrency)))

    def stop(self) -> None:
        self._stop.set()

    def served_by(self, node: str, since: float) -> bool:
        return any(r.started >= since and r.result is not None and r.result.node == node for r in self.requests)


@dataclass
class Phases:
    fault_at: float
    fault_end: float
    detected_s: float | None
    recovered_s: float | None


@dataclass
class Outcome:
    name: str
    recorder: Recorder
    phases: Phases
    note: str = ""


async def wait_for(predicate: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until ``predicate`` (run off the loop) holds, polled every 20 ms; None if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    return None


def breaker_state(edge: Server, device: str) -> str | None:
    for d in get_json(f"{edge.http}/v1/status")["devices"]:
        if d["id"] == device:  # NOTE: no breaker yet while it waits for its health check
            return str(d["breaker"]["state"]) if d["breaker"] else None
    return None  # gone from the registry


class Bench:
    def __init__(self, servers: Servers, models: Path, concurrency: int, phase_s: float) -> None:
        self.servers = servers
        self.models = models
        self.concurrency = concurrency
        self.phase_s = phase_s
        self.x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

    def region(self, name: str, devices: tuple[str, ...] = ("d1", "d2"), *edge_args: str,
               cloud: Server | None = None) -> tuple[Server, dict[str, Server]]:
        uplink = ("--cloud", str(cloud.endpoints["control"])) if cloud else ()
        edge = self.servers.fogline(f"{name}-edge", "edge", "--region", name, "--id", f"{name}-edge",
                                    *EDGE_ARGS, *edge_args, *uplink)
        self.servers.wait_ready(edge)
        nodes = {d: self.device(edge, name, d) for d in devices}
        self.servers.wait_ready(*nodes.values())
        self.wait_devices(edge, len(devices))
        return edge, nodes

    def device(self, edge: Server, region: str, name: str, *extra: str) -> Server:
        return self.servers.fogline(name, "device", "--region", region, "--id", name, "--models", str(self.models),
                                    "--master", str(edge.endpoints["control"]), *extra)

    @staticmethod
    def wait_devices(edge: Server, count: int) -> None:
        deadline = time.monotonic() + 30
        while len(get_json(f"{edge.http}/v1/status")["devices"]) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{edge.name} did not see {count} devices")
            time.sleep(0.05)

    async def run(self, name: str, client: Client, model: str, x: np.ndarray,
                  fault: Callable[[Recorder], Awaitable[Phases]], note: str = "") -> Outcome:
        progress(f"{name}: {self.phase_s:g} s before, the fault, {self.phase_s:g} s after")
        recorder = Recorder(lambda: client.infer(model, {"input": x}), self.concurrency)
        running = recorder.start()
        await asyncio.sleep(self.phase_s)  # NOTE: the phases are lengths of time to measure, not waits for state
        phases = await fault(recorder)
        await asyncio.sleep(self.phase_s)
        recorder.stop()
        await running
        return Outcome(name, recorder, phases, note)

    # -- the scenarios -----------------------------------------------------------------------------

    async def device_killed(self) -> Outcome:
        edge, nodes = self.region("kill")

        async def fault(rec: Recorder) -> Phases:
            at = time.monotonic()
            nodes["d1"].process.kill()
            detected = await wait_for(lambda: breaker_state(edge, "d1") != "closed", 10)
            restarted = self.device(edge, "kill", "d1")
            await asyncio.to_thread(self.servers.wait_ready, restarted)
            end = time.monotonic()
            recovered = await wait_for(lambda: rec.served_by("d1", end), 30)
            return Phases(at, end, detected, None if recovered is None else time.monotonic() - at)

        async with Client(edge.grpc, timeout_s=TIMEOUT_S) as client:
            return await self.run("device SIGKILL (restarted)", client, "mlp", self.x, fault,
                                  "recovered: restart + registration")

    async def device_hung(self) -> Outcome:
        edge, nodes = self.region("hang")

        async def fault(rec: Recorder) -> Phases:
            at = time.monotonic()
            os.kill(nodes["d1"].pid, signal.SIGSTOP)
            detected = await wait_for(lambda: breaker_state(edge, "d1") == "open", 10)
            await asyncio.sleep(max(0.0, self.phase_s - (time.monotonic() - at)))
            os.kill(nodes["d1"].pid, signal.SIGCONT)
            end = time.monotonic()
            recovered = await wait_for(lambda: breaker_state(edge, "d1") == "closed", 30)
            return Phases(at, end, detected, recovered)

        async with Client(edge.grpc, timeout_s=TIMEOUT_S) as client:
            return await self.run("device SIGSTOP, SIGCONT later", client, "mlp", self.x, fault,
                                  "recovered: circuit closed after SIGCONT")

    async def device_slow(self) -> Outcome:
        edge, _ = self.region("slow", ("d1", "d2"), "--slow-call-s", "0.05")

        async def fault(rec: Recorder) -> Phases:
            at = time.monotonic()
            slow = self.device(edge, "slow", "d3", "--fault-delay-ms", "100")
            await asyncio.to_thread(self.servers.wait_ready, slow)
            detected = await wait_for(lambda: breaker_state(edge, "d3") == "open", 20)
            return Phases(at, time.monotonic(), detected, None)

        async with Client(edge.grpc, timeout_s=TIMEOUT_S) as client:
            return await self.run("a slow device (+100 ms) joins", client, "mlp", self.x, fault,
                                  "detected: its circuit opened on slow calls")

    async def device_flapping(self) -> Outcome:
        edge, nodes = self.region("flap")

        async def fault(rec: Recorder) -> Phases:
            at = time.monotonic()
            detected = None
            for _ in range(4):
                os.kill(nodes["d1"].pid, signal.SIGSTOP)
                opened = await wait_for(lambda: breaker_state(edge, "d1") == "open", 1.0)
                if detected is None and opened is not None:
                    detected = time.monotonic() - at
                await asyncio.sleep(1.0)
                os.kill(nodes["d1"].pid, signal.SIGCONT)
                await asyncio.sleep(1.0)
            end = time.monotonic()
            recovered = await wait_for(lambda: breaker_state(edge, "d1") == "closed", 30)
            return Phases(at, end, detected, recovered)

        async with Client(edge.grpc, timeout_s=TIMEOUT_S) as client:
            return await self.run("device flapping (4 x 1 s hung)", client, "mlp", self.x, fault,
                                  "recovered: circuit closed after the last SIGCONT")

    async def edge_killed(self) -> Outcome:
        edge_a, _ = self.region("a", ("a1", "a2"))
        edge_b, _ = self.region("b", ("b1", "b2"))

        async def fault(rec: Recorder) -> Phases:
            at = time.monotonic()
            edge_a.process.kill()
            detected = await wait_for(
                lambda: any(r.started > at and r.result is not None and r.result.endpoint == edge_b.grpc
                            for r in rec.requests), 10)
            return Phases(at, time.monotonic(), detected, None)

        async with Client([edge_a.grpc, edge_b.grpc], timeout_s=TIMEOUT_S) as client:
            return await self.run("edge master SIGKILL (SDK with 2 regions)", client, "mlp", self.x, fault,
                                  "detected: first answer from the other region")

    async def worker_killed(self, digits_root: Path) -> Outcome:
        cloud = self.servers.fogline("cloud", "cloud", "--id", "cloud", "--catalog",
                                     str(digits_root / digits.CATALOG_FILE), "--member-ttl-s", "3")
        self.servers.wait_ready(cloud)
        worker = self.worker(cloud, digits_root)
        edge = self.servers.fogline("w-edge", "edge", "--region", "w", "--id", "w-edge", *EDGE_ARGS,
                                    "--cloud", str(cloud.endpoints["control"]))
        self.servers.wait_ready(edge)
        device = self.servers.fogline("w-d1", "device", "--region", "w", "--id", "w-d1", "--models",
                                      str(digits_root), "--model", digits.SMALL, "--master",
                                      str(edge.endpoints["control"]))
        self.servers.wait_ready(worker, device)
        deadline = time.monotonic() + 30
        while not get_json(f"{edge.http}/v1/status")["cloud"]["workers"]:
            if time.monotonic() > deadline:
                raise TimeoutError("the edge master never learned of the worker")
            time.sleep(0.05)
        split = digits.load_split(digits_root)
        catalog_rule = digits.small_probabilities(digits_root, split.x_test).max(axis=1)
        hard = split.x_test[np.argsort(catalog_rule)[:1]]  # the least certain image: always escalated

        async def fault(rec: Recorder) -> Phases:
            at = time.monotonic()
            worker.process.kill()
            detected = await wait_for(
                lambda: any(r.started > at and r.result is not None and r.result.degraded for r in rec.requests), 10)
            restarted = self.worker(cloud, digits_root, "worker-again")
            await asyncio.to_thread(self.servers.wait_ready, restarted)
            end = time.monotonic()
            recovered = await wait_for(
                lambda: any(r.started > end and r.result is not None and r.result.route == "cascade-hard"
                            for r in rec.requests), 30)
            return Phases(at, end, detected, None if recovered is None else time.monotonic() - at)

        async with Client(edge.grpc, timeout_s=TIMEOUT_S) as client:
            return await self.run("GPU worker SIGKILL (restarted), hard cascade inputs", client, "digits", hard,
                                  fault, "during: degraded device answers; recovered: escalation again")

    def worker(self, cloud: Server, root: Path, name: str = "worker") -> Server:
        return self.servers.fogline(name, "worker", "--id", "worker", "--models", str(root), "--model", digits.LARGE,
                                    "--master", str(cloud.endpoints["control"]))


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(outcomes: list[Outcome], command: str, date: str, concurrency: int, phase_s: float) -> str:
    rows = []
    for o in outcomes:
        p = o.phases
        phases = {"before": [r for r in o.recorder.requests if r.started < p.fault_at],
                  "during": [r for r in o.recorder.requests if p.fault_at <= r.started < p.fault_end],
                  "after": [r for r in o.recorder.requests if r.started >= p.fault_end]}
        lat = {k: [r.finished - r.started for r in v] for k, v in phases.items()}
        failed = [r for r in o.recorder.requests if r.error is not None]
        rows.append([o.name, str(len(o.recorder.requests)), str(len(failed)),
                     *(f"{_ms(lat[k], 0.5)} / {_ms(lat[k], 0.99)}" for k in ("before", "during", "after")),
                     _s(p.detected_s), _s(p.recovered_s), o.note])
    return "\n".join([
        "## Chaos: faults under load",
        "",
        f"Produced by `{command}` on {date}, on this machine. Each scenario starts its own processes, runs "
        f"{concurrency} closed-loop callers through the SDK (timeout {TIMEOUT_S:g} s; edge masters with a "
        f"0.3 s attempt timeout), measures {phase_s:g} s before the fault, the fault, and {phase_s:g} s after. "
        "*detected*: seconds from the fault until a circuit opened (or traffic left the faulty process); "
        "*recovered*: seconds from the fault's end (or the restart) until it served again. Latencies are "
        "p50 / p99 in ms of the requests started in each phase.",
        "",
        table(["Scenario", "sent", "failed", "before p50/p99", "during p50/p99", "after p50/p99", "detected s",
               "recovered s", "note"], rows, left=1),
    ])


async def run_all(tmp: Path, servers: Servers, concurrency: int, phase_s: float) -> list[Outcome]:
    models = build_sample_repository(tmp / "models")
    digits_root = tmp / "digits"
    subprocess.run([sys.executable, "-m", "fogline.digits", str(digits_root)], check=True, capture_output=True)
    bench = Bench(servers, models, concurrency, phase_s)
    outcomes = []
    for scenario in (bench.device_killed, bench.device_hung, bench.device_slow, bench.device_flapping,
                     bench.edge_killed):
        outcomes.append(await scenario())
        servers.stop_all()
        servers.started.clear()
    outcomes.append(await bench.worker_killed(digits_root))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--phase-s", type=float, default=5.0, help="seconds measured before and after the fault")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report to update (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="fogline-chaos-") as tmp, Servers(Path(tmp)) as servers:
        outcomes = asyncio.run(run_all(Path(tmp), servers, args.concurrency, args.phase_s))
    section = render(outcomes, report_command(argv, module="bench.chaos"), date, args.concurrency, args.phase_s)
    write_section(args.out, "chaos", section)
    progress(f"updated the chaos section of {args.out}")
    print(section)
    failed = sum(1 for o in outcomes for r in o.recorder.requests if r.error)
    print(f"\n{failed} failed requests in all", file=sys.stderr)
    if failed:
        for o in outcomes:
            errors = [r.error for r in o.recorder.requests if r.error]
            if errors:
                print(f"{o.name}: {statistics.mode(errors)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
