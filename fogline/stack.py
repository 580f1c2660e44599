"""``fogline up``: a whole hierarchy on this machine, as separate processes, with sample models:
a cloud master, one GPU worker, and two regions of an edge master with two device nodes each.

Each process is a ``python -m fogline <tier>`` child writing its log under ``<workdir>/logs`` and
its bound endpoints to a ready file; the stack waits for each, prints the endpoints and writes
them, with the process ids, to ``<workdir>/stack.json``. SIGINT/SIGTERM stop every child (SIGTERM,
so they drain, then SIGKILL after a grace period); a child that dies takes the stack down with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from fogline.digits import CATALOG_FILE
from fogline.launch import Launched, LaunchError, launch, wait_ready
from fogline.samples import build_sample_repository
from fogline.service import write_json_atomic

START_TIMEOUT_S = 60.0  # the first start builds the sample models
STOP_GRACE_S = 15.0


class StackError(RuntimeError):
    pass


DEVICE_MODELS = ("mlp", "cnn", "digits-small")
# cnn on the worker too: a device model with a cloud variant, for overflow and failover.
WORKER_MODELS = ("digits-large", "cnn")


class LocalStack:
    """Cloud master, one GPU worker, and ``regions`` regions of an edge master with ``devices``
    device nodes each. The first region's edge master listens on ``edge_port``/``edge_http_port``,
    the cloud master on ``cloud_port``/``cloud_http_port`` (0 = any free port); the rest on free ports."""

    def __init__(self, workdir: Path, *, edge_port: int = 8001, edge_http_port: int = 8000,
                 cloud_port: int = 8011, cloud_http_port: int = 8010, regions: int = 2,
                 devices: int = 2) -> None:
        self.workdir = Path(workdir).resolve()
        self.edge_port = edge_port
        self.edge_http_port = edge_http_port
        self.cloud_port = cloud_port
        self.cloud_http_port = cloud_http_port
        self.regions = [f"region-{chr(ord('a') + i)}" for i in range(regions)]
        self.devices = devices
        self.children: list[Launched] = []
        self.state_file = self.workdir / "stack.json"
        self._stop = threading.Event()

    def _spawn(self, name: str, *args: str) -> Launched:
        child = launch(name, args, self.workdir / "run", log_dir=self.workdir / "logs")
        self.children.append(child)
        return child

    def _wait_ready(self, child: Launched) -> dict[str, Any]:
        try:
            return wait_ready(child, START_TIMEOUT_S, cancelled=self._stop.is_set)
        except LaunchError as err:
            raise StackError(str(err)) from None

    def _build_models(self) -> Path:
        models = build_sample_repository(self.workdir / "models")
        # NOTE: the digits models are trained with torch, which only the worker and this short-lived
        # builder may import: never the process supervising the stack.
        built = subprocess.run([sys.executable, "-m", "fogline.digits", str(models)], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL, check=False)
        if built.returncode != 0:
            raise StackError(f"building the digits models failed:\n{built.stdout}{built.stderr}")
        return models

    def start(self) -> dict[str, Any]:
        models = self._build_models()
        cloud = self._wait_ready(self._spawn(
            "cloud", "cloud", "--id", "cloud", "--grpc-port", str(self.cloud_port),
            "--http-port", str(self.cloud_http_port), "--catalog", str(models / CATALOG_FILE)))
        worker = self._spawn("worker-0", "worker", "--id", "worker-0", "--models", str(models),
                             *_only(WORKER_MODELS), "--master", cloud["control"])
        edges = {}
        for i, region in enumerate(self.regions):
            ports = ("--grpc-port", str(self.edge_port), "--http-port", str(self.edge_http_port)) if i == 0 else ()
            edges[region] = self._wait_ready(self._spawn(
                f"{region}-edge", "edge", "--region", region, "--id", f"{region}-edge", *ports,
                "--cloud", cloud["control"]))
        devices = {
            region: [self._spawn(f"{region}-device-{d}", "device", "--region", region, "--id", f"{region}-device-{d}",
                                 "--models", str(models), *_only(DEVICE_MODELS), "--master", edge["control"])
                     for d in range(self.devices)]
            for region, edge in edges.items()
        }
        regions: dict[str, dict[str, Any]] = {
            region: {"edge": edges[region], "devices": [self._wait_ready(d) for d in devices[region]]}
            for region in self.regions}
        worker_endpoints = self._wait_ready(worker)
        for members in regions.values():
            self._wait_member(members["edge"]["http"], "devices", {d["id"] for d in members["devices"]})
        self._wait_member(cloud["http"], "edges", {e["id"] for e in edges.values()})
        self._wait_member(cloud["http"], "workers", {worker_endpoints["id"]})
        first = regions[self.regions[0]]
        state = {"workdir": str(self.workdir), "models": str(models), "cloud": cloud, "worker": worker_endpoints,
                 "regions": regions, "edge": first["edge"],
                 "devices": [d for r in regions.values() for d in r["devices"]], "pid": os.getpid()}
        write_json_atomic(self.state_file, state)
        return state

    def _wait_member(self, http: str, kind: str, ids: set[str]) -> None:
        """Poll a master's /v1/status until its ``kind`` list holds ``ids``."""
        deadline = time.monotonic() + START_TIMEOUT_S
        seen: set[str] = set()
        while time.monotonic() < deadline and not self._stop.is_set():
            with urllib.request.urlopen(f"http://{http}/v1/status", timeout=2) as reply:
                seen = {m["id"] for m in json.load(reply)[kind]}
            if ids <= seen:
                return
            time.sleep(0.05)
        raise StackError(f"{sorted(ids - seen)} did not register with the master at {http} ({kind})")

    def stop(self) -> None:
        for child in reversed(self.children):  # devices drain first, then the masters
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.state_file.unlink(missing_ok=True)

    def run(self) -> int:
        """Start, print the endpoints, supervise until a signal or a child's death, stop."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        code = 0
        try:
            state = self.start()
            _print_state(state, self.state_file)
            while not self._stop.wait(0.5):
                dead = [c for c in self.children if c.process.poll() is not None]
                if dead:
                    print(f"{dead[0].name} exited with {dead[0].process.returncode}; stopping the stack. "
                          f"Log: {dead[0].log_file}\n{dead[0].log_tail()}", file=sys.stderr)
                    code = 1
                    break
        except StackError as err:
            print(f"fogline up failed: {err}", file=sys.stderr)
            code = 1
        finally:
            print("stopping...", file=sys.stderr)
            self.stop()
        return code


def _only(models: tuple[str, ...]) -> list[str]:
    """``--model`` flags loading just ``models`` from the shared repository."""
    return [arg for name in models for arg in ("--model", name)]


def _print_state(state: dict[str, Any], state_file: Path) -> None:
    cloud, worker = state["cloud"], state["worker"]
    print(f"Fogline local stack is up (models in {state['models']})")
    print(f"  cloud master {cloud['id']:<18} grpc {cloud['grpc']:<22} http http://{cloud['http']}")
    print(f"  GPU worker   {worker['id']:<18} grpc {worker['grpc']:<22} http http://{worker['http']}")
    for region, members in state["regions"].items():
        edge = members["edge"]
        print(f"  {region}: edge master {edge['id']:<18} grpc {edge['grpc']:<22} http http://{edge['http']}")
        for d in members["devices"]:
            print(f"  {region}: device node {d['id']:<18} grpc {d['grpc']:<22} http http://{d['http']}")
    print(f"State file: {state_file}")
    print(f"Try:  fogline infer --model cnn      (or: curl http://{cloud['http']}/v1/topology)")
    print(f"      fogline calibrate --model digits --data {state['models']}/digits-split.npz --target-rate 0.3")
    print("Ctrl-C stops everything.", flush=True)
