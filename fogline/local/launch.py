"""Start Fogline processes (``python -m fogline <tier> ...``) and wait until they serve.

A started process writes the endpoints it bound to its ``--ready-file``; :func:`wait_ready` polls
for that file, failing early with the process's log if it dies first. Used by ``fogline up``, the
test suite and the benchmarks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0


class LaunchError(RuntimeError):
    """A process exited or stayed silent instead of becoming ready; the message has its log tail."""


@dataclass
class Launched:
    """A started process, its log, and (once ready) the endpoints it announced."""

    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    ready_file: Path
    endpoints: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.process.pid

    @property
    def grpc(self) -> str:
        """host:port of its V2 gRPC service."""
        return str(self.endpoints["grpc"])

    @property
    def http(self) -> str:
        """Base URL of its REST status server."""
        return f"http://{self.endpoints['http']}"

    def log(self) -> str:
        """Everything it has logged so far."""
        return self.log_file.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of its log; empty if the log cannot be read."""
        try:
            return "\n".join(self.log().splitlines()[-lines:])
        except OSError:
            return ""


def launch(name: str, args: Sequence[str], workdir: Path, *, module: str = "fogline",
           new_session: bool = False, log_dir: Path | None = None) -> Launched:
    """Start ``python -m <module> <args> --ready-file <workdir>/<name>.ready.json``, logging to
    ``<log_dir or workdir>/<name>.log``; returns at once (see :func:`wait_ready`)."""
    log_dir = log_dir or workdir
    for directory in (workdir, log_dir):
        directory.mkdir(parents=True, exist_ok=True)
    ready, log = workdir / f"{name}.ready.json", log_dir / f"{name}.log"
    ready.unlink(missing_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", module, *args, "--ready-file", str(ready)],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=new_session)
    return Launched(name, process, log, ready)


def wait_ready(launched: Launched, timeout_s: float = START_TIMEOUT_S,
               cancelled: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Wait for ``launched`` to announce its endpoints; they are stored on it and returned."""
    deadline = time.monotonic() + timeout_s
    while not cancelled():
        if launched.process.poll() is not None:
            raise LaunchError(f"{launched.name} exited with {launched.process.returncode}; "
                              f"last log lines:\n{launched.log_tail()}")
        if launched.ready_file.is_file():
            launched.endpoints = json.loads(launched.ready_file.read_text())
            return launched.endpoints
        if time.monotonic() > deadline:
            raise LaunchError(f"{launched.name} not ready after {timeout_s:.0f}s; last log lines:\n"
                              f"{launched.log_tail()}")
        time.sleep(0.02)
    raise LaunchError(f"{launched.name}: cancelled while starting")
