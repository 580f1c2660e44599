"""``fogline up``: a whole hierarchy on this machine, as separate processes, with sample models.

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

from fogline.launch import Launched, LaunchError, launch, wait_ready
from fogline.samples import build_sample_repository
from fogline.service import write_json_atomic

START_TIMEOUT_S = 60.0  # the first start builds the sample models
STOP_GRACE_S = 15.0


class StackError(RuntimeError):
    pass


class LocalStack:
    def __init__(self, workdir: Path, *, edge_port: int = 8001, edge_http_port: int = 8000, devices: int = 2,
                 region: str = "local") -> None:
        self.workdir = Path(workdir).resolve()
        self.edge_port = edge_port
        self.edge_http_port = edge_http_port
        self.devices = devices
        self.region = region
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

    def start(self) -> dict[str, Any]:
        models = build_sample_repository(self.workdir / "models")
        edge = self._spawn("edge", "edge", "--region", self.region, "--id", f"{self.region}-edge",
                           "--grpc-port", str(self.edge_port), "--http-port", str(self.edge_http_port))
        edge_endpoints = self._wait_ready(edge)
        devices = [
            self._spawn(f"device-{i}", "device", "--region", self.region, "--id", f"{self.region}-device-{i}",
                        "--models", str(models), "--master", edge_endpoints["control"])
            for i in range(self.devices)
        ]
        device_endpoints = [self._wait_ready(d) for d in devices]
        self._wait_registered(edge_endpoints["http"], {d["id"] for d in device_endpoints})
        state = {"workdir": str(self.workdir), "models": str(models), "edge": edge_endpoints,
                 "devices": device_endpoints, "pid": os.getpid()}
        write_json_atomic(self.state_file, state)
        return state

    def _wait_registered(self, http: str, ids: set[str]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://{http}/v1/status", timeout=2) as reply:
                seen = {d["id"] for d in json.load(reply)["devices"]}
            if ids <= seen:
                return
            time.sleep(0.05)
        raise StackError(f"device nodes {sorted(ids - seen)} did not register with the edge master")

    def stop(self) -> None:
        for child in reversed(self.children):  # devices drain first, then the edge
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


def _print_state(state: dict[str, Any], state_file: Path) -> None:
    edge = state["edge"]
    print(f"Fogline local stack is up (models in {state['models']})")
    print(f"  edge master  {edge['id']:<18} grpc {edge['grpc']:<22} http http://{edge['http']}")
    for d in state["devices"]:
        print(f"  device node  {d['id']:<18} grpc {d['grpc']:<22} http http://{d['http']}")
    print(f"State file: {state_file}")
    print(f"Try:  fogline infer --model cnn      (or: curl http://{edge['http']}/v1/status)")
    print("Ctrl-C stops everything.", flush=True)
