"""Start real Fogline processes (``python -m fogline ...``) for tests, and always stop them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0


@dataclass
class FoglineProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    endpoints: dict[str, Any] = field(default_factory=dict)

    @property
    def grpc(self) -> str:
        return str(self.endpoints["grpc"])

    @property
    def http(self) -> str:
        return f"http://{self.endpoints['http']}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout_s)


class ProcessGroup:
    """Processes started by one test; :meth:`stop_all` kills whatever is left."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[FoglineProcess] = []

    def start(self, name: str, *args: str, wait: bool = True) -> FoglineProcess:
        ready = self.workdir / f"{name}.ready.json"
        log = self.workdir / f"{name}.log"
        ready.unlink(missing_ok=True)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "fogline", "--log-level", "INFO", *args, "--ready-file", str(ready)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = FoglineProcess(name, process, log)
        self.processes.append(proc)
        if wait:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not ready.is_file():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{proc.log()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready after {START_TIMEOUT_S}s:\n{proc.log()[-3000:]}")
                time.sleep(0.02)
            proc.endpoints = json.loads(ready.read_text())
        return proc

    def edge(self, name: str = "edge", region: str = "test", *extra: str) -> FoglineProcess:
        return self.start(name, "edge", "--region", region, "--id", name, *extra)

    def device(self, name: str, models: Path, edge: FoglineProcess | None = None, region: str = "test",
               *extra: str) -> FoglineProcess:
        master = ("--master", edge.endpoints["control"]) if edge is not None else ()
        return self.start(name, "device", "--region", region, "--id", name, "--models", str(models),
                          *master, *extra)

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.process.poll() is None:
                proc.process.kill()
        for proc in self.processes:
            proc.process.wait(10)


def wait_for(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; its value. Fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)


def registered_devices(edge: FoglineProcess) -> set[str]:
    return {d["id"] for d in get_json(f"{edge.http}/v1/status")["devices"]}
