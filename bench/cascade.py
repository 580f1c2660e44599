"""``python -m bench.cascade``: the digits cascade served end to end, against the models alone.

Builds the digits models, starts a cloud master (with a catalog holding one cascade per threshold),
a GPU worker (digits-large), an edge master and a device node (digits-small) as subprocesses, and
sends every image of the test split as its own request through the edge master for: the device
model alone, the cloud model alone, and the cascade at thresholds that escalate 5-40% of the
validation split. It reports accuracy, the share escalated and p50 latency per route, next to the
same models run in this process (the physical limit), and writes the section between the
``cascade`` markers of docs/perf.md (the rest of the file is ``python -m bench``'s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.report import PERF_DOC, machine_facts, report_command, table, write_section
from bench.servers import Servers, get_json
from bench.suite import progress
from fogline.core.escalation.calibration import threshold_for_rate
from fogline.local import digits
from fogline.sdk.client import Client

DEFAULT_OUT = PERF_DOC
SHARES = (0.05, 0.1, 0.2, 0.3, 0.4)  # of the validation split, each a cascade entry in the catalog
GOAL_DROP, GOAL_SHARE = 0.005, 0.30


@dataclass
class Run:
    """One configuration served through the edge: per request its route, latency and correctness."""

    name: str
    threshold: float | None = None
    right: list[bool] = field(default_factory=list)
    latency_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.right))

    def share(self, route: str) -> float:
        return len(self.latency_s.get(route, [])) / len(self.right)


def catalog(root: Path, val_small: np.ndarray) -> tuple[str, dict[str, float]]:
    """A catalog with one cascade per share of SHARES, and the thresholds by entry name."""
    thresholds = {f"digits-{round(share * 100):02d}": threshold_for_rate(val_small, "max_prob", share).max_prob_below
                  for share in SHARES}
    text = "".join(f'[models.{name}]\nplacement = "cascade"\ndevice_model = "{digits.SMALL}"\n'
                   f'cloud_model = "{digits.LARGE}"\noutput = "probs"\nmax_prob_below = {t!r}\n\n'
                   for name, t in thresholds.items())
    return text, {name: float(t) for name, t in thresholds.items() if t is not None}


async def serve(edge: str, runs: list[Run], x: np.ndarray, y: np.ndarray, model_of: dict[str, str]) -> None:
    """Each image through every configuration in turn, so that the machine's noise falls on all alike."""
    progress(f"{len(x)} images x {len(runs)} configurations through the edge master, interleaved")
    async with Client(edge, timeout_s=30.0) as client:
        for row, label in zip(x, y, strict=True):
            for run in runs:
                started = time.perf_counter()
                result = await client.infer(model_of[run.name], {"input": row[None, :]})
                run.latency_s[result.route].append(time.perf_counter() - started)
                run.right.append(int(result.outputs["probs"].argmax()) == int(label))


def in_process_p50_ms(root: Path, x: np.ndarray) -> dict[str, float]:
    """Single-row latency of each model run in this process: ONNX Runtime, TorchScript on the CPU."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(root / digits.SMALL / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    large = torch.jit.load(str(root / digits.LARGE / "1" / "model.pt"), map_location="cpu").eval()

    def p50(call) -> float:  # type: ignore[no-untyped-def]
        times = []
        for row in x:
            started = time.perf_counter()
            call(row[None, :])
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    with torch.inference_mode():
        return {"small": p50(lambda r: session.run(["probs"], {"input": r})),
                "large": p50(lambda r: large(torch.from_numpy(r)))}


def render(runs: list[Run], raw: dict[str, float], offline: dict[str, float], command: str, date: str) -> str:
    cloud = next(r for r in runs if r.name == "cloud only")
    rows = []
    for run in runs:
        escalated = run.share("cascade-hard") if run.threshold is not None else (1.0 if run is cloud else 0.0)
        latencies = [s for values in run.latency_s.values() for s in values]
        meets = (run.threshold is not None and escalated <= GOAL_SHARE
                 and run.accuracy >= cloud.accuracy - GOAL_DROP)
        rows.append([run.name, "" if run.threshold is None else f"{run.threshold:.3f}",
                     f"{100 * escalated:.1f}%", f"{100 * run.accuracy:.2f}%",
                     f"{100 * (run.accuracy - cloud.accuracy):+.2f}", f"{1000 * statistics.median(latencies):.2f}",
                     "**yes**" if meets else ""])
    by_route: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        label = {"device only": "device only (digits-small on a device)",
                 "cloud only": "cloud only (digits-large on the worker)"}.get(run.name)
        for route, values in run.latency_s.items():
            by_route[label or f"cascade, {route}"].extend(values)
    route_rows = [[name, str(len(values)), f"{1000 * statistics.median(values):.2f}"]
                  for name, values in by_route.items()]
    route_rows += [["in-process: digits-small, ONNX Runtime", "", f"{raw['small']:.3f}"],
                   ["in-process: digits-large, TorchScript (CPU)", "", f"{raw['large']:.3f}"]]
    return "\n".join([
        "## Cascade: the digits models served end to end",
        "",
        f"Produced by `{command}` on {date}, one run on this machine (cloud master, GPU worker on the CPU, "
        f"edge master, one device node, and the client all sharing it). Each of the {len(cloud.right)} images "
        "of the digits test split is one request (one row) through the edge master, one at a time, each image "
        "through every configuration in turn. "
        "*threshold*: the catalog rule `max_prob_below`, chosen on the validation split to escalate "
        f"{', '.join(f'{round(100 * s)}%' for s in SHARES)} of it. *meets goal*: within "
        f"{100 * GOAL_DROP:.1f} points of cloud-only accuracy while escalating at most {GOAL_SHARE:.0%} "
        f"(the issue's goal). Offline (same models in this process, no serving): device {100 * offline['small']:.2f}%, "
        f"cloud {100 * offline['large']:.2f}% — the served accuracies match them exactly.",
        "",
        table(["Configuration", "threshold", "escalated", "accuracy", "vs cloud-only (points)", "p50 ms",
               "meets goal"], rows, left=1),
        "",
        "Latency per route (single-row requests, client → edge master → device node and/or GPU worker):",
        "",
        table(["Route", "requests", "p50 ms"], route_rows, left=1),
        "",
        "A hard input costs the device's answer plus the cloud's (`cascade-hard` ≈ device + cloud-only); an easy "
        "one costs the device's alone. On this one-machine run the worker has no GPU and the cloud hop is "
        "loopback, so the cloud is not slower than the device here; across a real WAN each escalation adds "
        "the round trip to the cloud, which is what the cascade saves on the other requests.",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.cascade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report to update (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine_facts()  # NOTE: samples the load average before the run, like the main benchmark
    with tempfile.TemporaryDirectory(prefix="fogline-cascade-") as tmp, Servers(Path(tmp)) as servers:
        root = Path(tmp) / "models"
        progress("building the digits models")
        subprocess.run([sys.executable, "-m", "fogline.digits", str(root)], check=True, capture_output=True)
        split = digits.load_split(root)
        text, thresholds = catalog(root, digits.small_probabilities(root, split.x_val))
        (root / "bench-catalog.toml").write_text(text)
        cloud = servers.fogline("cloud", "cloud", "--id", "cloud", "--catalog", str(root / "bench-catalog.toml"))
        servers.wait_ready(cloud)
        worker = servers.fogline("worker", "worker", "--id", "worker", "--models", str(root), "--model",
                                 digits.LARGE, "--master", cloud.endpoints["control"])
        edge = servers.fogline("edge", "edge", "--region", "bench", "--id", "edge", "--cloud",
                               cloud.endpoints["control"])
        servers.wait_ready(edge)
        device = servers.device("device", "bench", root, master=edge, only=[digits.SMALL])
        servers.wait_ready(worker, device)
        deadline = time.monotonic() + 60
        while not (get_json(f"{edge.http}/v1/status")["cloud"]["workers"]
                   and get_json(f"{edge.http}/v1/status")["devices"]):
            if time.monotonic() > deadline:
                raise TimeoutError("the edge master did not see the worker and the device within 60 s")
            time.sleep(0.1)
        runs = [Run("device only"), Run("cloud only")] + [
            Run(f"cascade, escalating {round(s * 100)}% of val", threshold=t)
            for s, t in zip(SHARES, thresholds.values(), strict=True)]
        model_of = {"device only": digits.SMALL, "cloud only": digits.LARGE}
        model_of.update({run.name: name for run, name in zip(runs[2:], thresholds, strict=True)})
        asyncio.run(serve(edge.grpc, runs, split.x_test, split.y_test, model_of))
        progress("the same models in this process")
        raw = in_process_p50_ms(root, split.x_test)
        offline = {"small": float((digits.small_probabilities(root, split.x_test).argmax(1) == split.y_test).mean()),
                   "large": float((digits.large_probabilities(root, split.x_test).argmax(1) == split.y_test).mean())}
    for run, key in ((runs[0], "small"), (runs[1], "large")):
        if abs(run.accuracy - offline[key]) > 1e-9:
            raise AssertionError(f"{run.name} served accuracy {run.accuracy} differs from offline {offline[key]}")
    section = render(runs, raw, offline, report_command(argv, module="bench.cascade"), date)
    write_section(args.out, "cascade", section)
    progress(f"updated the cascade section of {args.out}")
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
