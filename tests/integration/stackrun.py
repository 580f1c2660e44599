"""``fogline up`` as a child process of a test: start it, read its state file, stop it, and make sure
nothing it started outlives the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.polling import wait_for

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
FREE_PORTS = ("--edge-port", "0", "--edge-http-port", "0", "--cloud-port", "0", "--cloud-http-port", "0")
DEFAULT_PORTS = {"--edge-port": 8001, "--edge-http-port": 8000, "--cloud-port": 8011, "--cloud-http-port": 8010}


def client_tls(state: dict[str, Any]) -> Any:
    """The SDK's TLS for a stack from its state file (None for an ``--insecure`` one)."""
    from fogline.sdk.client import TLS

    tls = state.get("tls")
    return TLS(ca=tls["ca"], cert=tls["client_cert"], key=tls["client_key"]) if tls else None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def seed_models(workdir: Path, *repositories: Path) -> None:
    """Copy already built sample and digits models into ``workdir/models``, so that the stack does not
    train them again (it builds only what is missing)."""
    models = workdir / "models"
    models.mkdir(parents=True, exist_ok=True)
    for repository in repositories:
        for entry in repository.iterdir():
            target = models / entry.name
            if entry.is_dir():
                shutil.copytree(entry, target, dirs_exist_ok=True)
            else:
                shutil.copy2(entry, target)


@contextmanager
def running_stack(root: Path, *repositories: Path, flags: tuple[str, ...] = FREE_PORTS) -> Iterator[Up]:
    """A ``fogline up`` in ``root/stack`` (``flags``: free ports), seeded with already built
    ``repositories``, up and running for the block; whatever is left of it is killed after."""
    seed_models(root / "stack", *repositories)
    up = Up(root / "stack", root / "up.log", *flags)
    try:
        up.wait_up()
        yield up
    finally:
        up.cleanup()


class Up:
    """One ``fogline up`` run in ``workdir``, its output in ``log``."""

    def __init__(self, workdir: Path, log: Path, *flags: str) -> None:
        self.workdir, self.log = workdir, log
        self.state_file = workdir / "stack.json"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fogline", "up", "--workdir", str(workdir), *flags],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "FOGLINE_LOG_LEVEL": "INFO"})  # the children log draining
        self._seen: set[int] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self) -> dict[str, Any]:
        def started() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"fogline up exited with {self.process.returncode}:\n{self.output()}")
            return self.state_file.is_file()
        wait_for(started, timeout_s=START_TIMEOUT_S, interval_s=0.1, what="fogline up to write stack.json")
        return self.state()

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def child_pids(self) -> set[int]:
        """Every child pid the stack has announced so far (ready files), restarted ones included."""
        for ready in (self.workdir / "run").glob("*.json"):
            try:
                self._seen.add(int(json.loads(ready.read_text())["pid"]))
            except (OSError, ValueError, KeyError):
                continue
        return set(self._seen)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.child_pids()
        self.process.send_signal(sig)
        return self.process.wait(STOP_TIMEOUT_S)

    def cleanup(self) -> None:
        """Kill what is left: the stack, then any orphan of it."""
        children = self.child_pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
