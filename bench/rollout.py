"""``python -m bench.rollout``: the model lifecycle under load, on a real ``fogline up`` (two regions, an
edge master and two device nodes each, mTLS), closed-loop load at concurrency 32 on ``cnn`` split
over the two edges. Three scenarios, in this order:

1. **hot swap**: a new cnn version put in every device's repository and loaded through Triton's
   ``RepositoryModelLoad`` (admin token) on all devices at once: p99 during the swap against the
   steady state before it, failures;
2. **good rollout**: a pushed version ("retrained": the same argmax), steps 10/50/100 with a 5 s
   bake: p50/p99 before, during and after, failures, time to converge, bytes the cloud sent;
3. **bad rollout**: a 10x slower version: the p99 gate should roll it back at the first step; time
   to roll back, failures, and the failure it names.

The marked section ``rollout`` of docs/perf.md is rewritten.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.report import PERF_DOC, machine_facts, report_command, table, write_section
from fogline._proto import inference_pb2 as pb
from fogline.local.samples import build_cnn
from fogline.sdk.client import TLS, Client

DEFAULT_OUT = PERF_DOC
CONCURRENCY = 32
STEADY_S = 6.0
LOAD = "/inference.GRPCInferenceService/RepositoryModelLoad"
FREE_PORTS = ("--edge-port", "0", "--edge-http-port", "0", "--cloud-port", "0", "--cloud-http-port", "0")


@dataclass
class Sample:
    started: float
    finished: float
    ok: bool
    version: str


@dataclass
class Loads:
    """Closed-loop callers, ``CONCURRENCY // len(clients)`` on each client, until stopped."""

    clients: list[Client]
    inputs: list[np.ndarray]
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _caller(self, client: Client, seed: int) -> None:
        i = seed
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result = await client.infer("cnn", {"input": self.inputs[i % len(self.inputs)]})
                self.samples.append(Sample(started, time.monotonic(), True, result.version))
            except Exception:  # every failure counts, whatever it is
                self.samples.append(Sample(started, time.monotonic(), False, ""))
            i += 1

    def start(self) -> asyncio.Future[Any]:
        per = CONCURRENCY // len(self.clients)
        return asyncio.gather(*(self._caller(c, k) for c in self.clients for k in range(per)))

    def stop(self) -> None:
        self._stop.set()

    def window(self, start: float, end: float) -> dict[str, Any]:
        inside = [s for s in self.samples if s.started < end and s.finished > start]
        ok = [s.finished - s.started for s in inside if s.ok]
        return {"requests": len(inside), "failed": sum(not s.ok for s in inside),
                "p50_ms": float(np.percentile(ok, 50) * 1000) if ok else 0.0,
                "p99_ms": float(np.percentile(ok, 99) * 1000) if ok else 0.0,
                "versions": sorted({s.version for s in inside if s.ok})}


class Stack:
    """``fogline up`` in a scratch directory, with free ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / "up.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "fogline", "up", "--workdir", str(workdir),
                                         *FREE_PORTS], stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while not (workdir / "stack.json").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fogline up did not start; see {workdir / 'up.log'}")
            time.sleep(0.2)
        self.state = json.loads((workdir / "stack.json").read_text())
        tls = self.state["tls"]
        self.ssl = ssl.create_default_context(cafile=tls["ca"])
        self.ssl.load_cert_chain(tls["client_cert"], tls["client_key"])
        self.tls = TLS(ca=tls["ca"], cert=tls["client_cert"], key=tls["client_key"])
        self.token = Path(tls["admin_token_file"]).read_text().strip()

    def get(self, address: str, path: str) -> bytes:
        with urllib.request.urlopen(f"https://{address}{path}", timeout=5, context=self.ssl) as reply:
            return bytes(reply.read())

    def cloud(self, path: str) -> Any:
        return json.loads(self.get(self.state["cloud"]["http"], path))

    def bytes_sent(self) -> int:
        text = self.get(self.state["cloud"]["http"], "/metrics").decode()
        found = re.search(r"^fogline_artefact_bytes_sent_total(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def devices(self) -> list[dict[str, Any]]:
        return [d for region in self.state["regions"].values() for d in region["devices"]]

    def fogline(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "fogline", *args, "--state", str(self.workdir / "stack.json")],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise SystemExit(f"fogline {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def hot_swap(stack: Stack, device: dict[str, Any], version: str) -> None:
    creds = grpc.ssl_channel_credentials(Path(stack.state["tls"]["ca"]).read_bytes(),
                                         Path(stack.state["tls"]["client_key"]).read_bytes(),
                                         Path(stack.state["tls"]["client_cert"]).read_bytes())
    async with grpc.aio.secure_channel(device["grpc"], creds) as channel:
        load = channel.unary_unary(LOAD, request_serializer=pb.RepositoryModelLoadRequest.SerializeToString,
                                   response_deserializer=pb.RepositoryModelLoadResponse.FromString)
        request = pb.RepositoryModelLoadRequest(model_name="cnn")
        request.parameters["version"].string_param = version
        await load(request, timeout=120, metadata=(("authorization", f"Bearer {stack.token}"),))


async def until(predicate: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := await asyncio.to_thread(predicate)):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:g}s")
        await asyncio.sleep(0.2)
    return value


async def scenario(loads: Loads, action: Callable[[], Awaitable[Any]]) -> tuple[dict[str, Any], Any]:
    """Steady window, the action (timed), an after window: each window's figures."""
    before_from = time.monotonic()
    await asyncio.sleep(STEADY_S)  # NOTE: a measurement window
    during_from = time.monotonic()
    result = await action()
    during_to = time.monotonic()
    await asyncio.sleep(STEADY_S)
    return {"before": loads.window(before_from, during_from), "during": loads.window(during_from, during_to),
            "after": loads.window(during_to, time.monotonic()), "seconds": during_to - during_from}, result


async def run(scratch: Path) -> dict[str, Any]:
    stack = Stack(scratch / "stack")
    try:
        rng = np.random.default_rng(5)
        inputs = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(16)]
        clients = [Client(r["edge"]["grpc"], tls=stack.tls, timeout_s=30) for r in stack.state["regions"].values()]
        loads = Loads(clients, inputs)
        running = loads.start()
        await asyncio.sleep(3.0)  # warm-up
        results: dict[str, Any] = {}

        await asyncio.to_thread(build_cnn, scratch / "cnn-2", logit_scale=1.02)
        for device in stack.devices():
            target = stack.workdir / "nodes" / device["id"] / "models" / "cnn" / "2"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(scratch / "cnn-2" / "1" / "model.onnx", target / "model.onnx")

        async def swap() -> None:
            await asyncio.gather(*(hot_swap(stack, d, "2") for d in stack.devices()))
        results["hot swap"], _ = await scenario(loads, swap)

        async def rollout(version: int, variant: dict[str, Any], want: str) -> dict[str, Any]:
            # NOTE: blocking steps in a thread: the callers on this event loop keep their pace meanwhile
            await asyncio.to_thread(build_cnn, scratch / f"cnn-{version}", **variant)
            await asyncio.to_thread(stack.fogline, "models", "push", "cnn",
                                    str(scratch / f"cnn-{version}" / "1" / "model.onnx"), "--version", str(version))
            sent = await asyncio.to_thread(stack.bytes_sent)
            size = (scratch / f"cnn-{version}" / "1" / "model.onnx").stat().st_size

            async def go() -> dict[str, Any]:
                await asyncio.to_thread(stack.fogline, "rollout", "start", "cnn", "--version", str(version),
                                        "--steps", "10,50,100", "--bake-s", "5")
                status: dict[str, Any] = await until(
                    lambda: (s := stack.cloud("/v1/rollouts/cnn"))["state"] in ("done", "rolled_back") and s, 240)
                return status
            figures, status = await scenario(loads, go)
            figures.update(state=status["state"], failure=status["failure"], artefact_bytes=size,
                           cloud_bytes_sent=stack.bytes_sent() - sent, expected=want)
            return figures

        results["good rollout"] = await rollout(3, {"logit_scale": 1.03}, "done")
        results["bad rollout"] = await rollout(4, {"logit_scale": 1.04, "slowdown": 10}, "rolled_back")
        loads.stop()
        await running
        for c in clients:
            await c.close()
        return results
    finally:
        stack.stop()


def report(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results.items():
        for phase in ("before", "during", "after"):
            w = r[phase]
            rows.append([name if phase == "before" else "", phase, str(w["requests"]), str(w["failed"]),
                         f"{w['p50_ms']:.1f}", f"{w['p99_ms']:.1f}", ", ".join(w["versions"])])
    lines = [table(["scenario", "window", "requests", "failed", "p50 ms", "p99 ms", "versions answering"], rows), ""]
    swap = results["hot swap"]
    ratio = swap["during"]["p99_ms"] / swap["before"]["p99_ms"] if swap["before"]["p99_ms"] else float("nan")
    lines.append(f"- Hot swap on all 4 devices: took {swap['seconds']:.1f} s; p99 during it is {ratio:.2f}x the "
                 f"steady p99 (target at most 1.5x).")
    for name in ("good rollout", "bad rollout"):
        r = results[name]
        lines.append(f"- {name.capitalize()}: ended `{r['state']}` after {r['seconds']:.1f} s; the cloud sent "
                     f"{r['cloud_bytes_sent']:,} bytes for a {r['artefact_bytes']:,}-byte artefact "
                     f"({r['cloud_bytes_sent'] / r['artefact_bytes']:.2f} copies)."
                     + (f" Failure: {r['failure']}" if r["failure"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the perf doc to rewrite the section of")
    parser.add_argument("--no-write", action="store_true", help="print only")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    facts = ", ".join(f"{k}: {v}" for k, v in machine_facts()[:3])
    with tempfile.TemporaryDirectory(prefix="fogline-bench-rollout-") as scratch:
        results = asyncio.run(run(Path(scratch)))
    body = report(results)
    print(body)
    print(json.dumps(results, indent=2))
    if not args.no_write:
        section = (f"## Model lifecycle: hot swap and rollouts under load\n\n"
                   f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} with "
                   f"`{report_command(argv, module='bench.rollout')}` ({facts}): `fogline up`, closed-loop load at "
                   f"concurrency {CONCURRENCY} on cnn "
                   f"over both regions' edges; windows of {STEADY_S:g} s before and after each change.\n\n{body}\n")
        write_section(args.out, "rollout", section)
    failed = sum(r[p]["failed"] for r in results.values() for p in ("before", "during", "after"))
    wrong = [n for n in ("good rollout", "bad rollout") if results[n]["state"] != results[n]["expected"]]
    return 1 if failed or wrong else 0


if __name__ == "__main__":
    os.environ.setdefault("FOGLINE_LOG_LEVEL", "WARNING")
    sys.exit(main())
