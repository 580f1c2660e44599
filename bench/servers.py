"""The server processes the benchmark loads: device nodes, an edge master and echo servers.

Each runs as a real subprocess that writes its bound endpoints to a ready file. :class:`Servers`
kills every process it started when its ``with`` block ends, whether by success, error or Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fogline.local.launch import START_TIMEOUT_S, Launched, launch, wait_ready

LOG_LEVEL = "WARNING"  # no per-request logging in the processes being measured


Server = Launched


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    """GET ``url`` and parse the JSON body."""
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return json.load(reply)


class Servers:
    """Server subprocesses started by one benchmark run; all are killed when the block exits."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Server] = []

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, args: Sequence[str], module: str = "fogline") -> Server:
        """Start ``python -m <module> <args> --ready-file F`` without waiting; see :meth:`wait_ready`."""
        # A session of its own: Ctrl-C reaches only the benchmark, which then kills it (stop_all).
        server = launch(name, args, self.workdir, module=module, new_session=True)
        self.started.append(server)
        return server

    def fogline(self, name: str, *args: str) -> Server:
        """Start ``python -m fogline <args>``."""
        return self.start(name, ["--log-level", LOG_LEVEL, *args])

    def edge(self, name: str, region: str) -> Server:
        """Start an edge master for ``region``."""
        return self.fogline(name, "edge", "--region", region, "--id", name)

    def device(self, name: str, region: str, models: Path, *, master: Server | None = None,
               only: Sequence[str] = ()) -> Server:
        """Start a device node serving ``models`` (just ``only``, if given), registered with ``master``."""
        args = ["device", "--region", region, "--id", name, "--models", str(models)]
        if master is not None:
            args += ["--master", str(master.endpoints["control"])]
        for model in only:
            args += ["--model", model]
        return self.fogline(name, *args)

    def echo(self, name: str, response_file: Path) -> Server:
        """Start a bare gRPC server answering every ModelInfer with the bytes of ``response_file``."""
        return self.start(name, ["--response", str(response_file)], module="bench.echo_server")

    def wait_ready(self, *servers: Server, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until each of ``servers`` has written its ready file, and read its endpoints."""
        for server in servers:
            wait_ready(server, timeout_s)

    def stop_all(self) -> None:
        """Kill every process started (still running or not) and reap it; Ctrl-C waits until done."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._kill_all()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _kill_all(self) -> None:
        for server in self.started:
            if server.process.poll() is None:
                server.process.kill()
        for server in self.started:
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                print(f"warning: {server.name} (pid {server.pid}) did not exit after SIGKILL", file=sys.stderr)


def wait_registered(edge: Server, device: Server, timeout_s: float = 30.0) -> None:
    """Poll the edge's ``/v1/status`` until ``device`` is among its devices."""
    deadline = time.monotonic() + timeout_s
    while True:
        devices = {d["id"] for d in get_json(f"{edge.http}/v1/status")["devices"]}
        if device.name in devices:
            return
        if device.process.poll() is not None:
            raise RuntimeError(f"{device.name} exited with {device.process.returncode}:\n{device.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{device.name} did not register with {edge.name} within {timeout_s}s; "
                               f"edge sees {sorted(devices)}")
        time.sleep(0.05)
