"""The supervisor of ``fogline up`` on real ``python -m fogline`` children: a killed child comes back on
the ports it had, one that crash-loops is left down, and a child whose parent dies drains and exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fogline.adapters.ports import port_free
from fogline.local.supervisor import ChildState, RestartSettings, Supervisor
from fogline.sdk.client import SyncClient
from tests.polling import wait_for

pytestmark = pytest.mark.integration

FAST = RestartSettings(initial_backoff_s=0.05, max_backoff_s=0.2, crash_loop_exits=3, crash_loop_window_s=60)


def supervisor(tmp_path: Path, said: list[str]) -> Supervisor:
    return Supervisor(tmp_path / "run", tmp_path / "logs", settings=FAST, say=said.append)


def tick_until(sup: Supervisor, predicate, timeout_s: float, what: str) -> None:
    def ticked() -> bool:
        sup.tick()
        return bool(predicate())
    wait_for(ticked, timeout_s=timeout_s, interval_s=0.05, what=what)


def test_a_killed_child_is_restarted_on_the_ports_it_had(tmp_path: Path, sample_models: Path) -> None:
    said: list[str] = []
    sup = supervisor(tmp_path, said)
    child = sup.spawn("dev", ["device", "--id", "dev", "--models", str(sample_models), "--model", "mlp"], stop_order=0)
    try:
        first = sup.wait_ready(child, 60)
        child.launched.process.send_signal(signal.SIGKILL)
        tick_until(sup, lambda: child.state is ChildState.BACKOFF, 10, "the exit to be noticed")
        assert said == [f"fogline up: dev exited with signal SIGKILL; restart 1 in 0.1 s. Log: {child.launched.log_file}"]
        tick_until(sup, lambda: child.state is ChildState.RUNNING, 60, "the restart to be ready")
        again = child.endpoints
        assert again["pid"] != first["pid"] and child.launched.process.poll() is None
        assert (again["grpc"], again["http"]) == (first["grpc"], first["http"])
        assert said[-1] == f"fogline up: dev is back (pid {child.launched.pid})"
        with SyncClient(again["grpc"], timeout_s=10) as client:
            assert client.model_ready("mlp")
    finally:
        sup.stop(grace_s=10)
    assert child.launched.process.poll() is not None


def test_a_crash_looping_child_is_left_down_and_reported(tmp_path: Path) -> None:
    said: list[str] = []
    sup = supervisor(tmp_path, said)
    child = sup.spawn("broken", ["device", "--id", "broken", "--models", str(tmp_path / "missing")], stop_order=0)
    tick_until(sup, lambda: child.state is ChildState.DOWN, 60, "the crash loop to be given up")
    assert [line.split(";")[1].split(" in ")[0] for line in said[:-1]] == [" restart 1", " restart 2"]
    assert said[-1].startswith("fogline up: broken exited with code 2, 3 exits within 60 s: leaving it down.")
    for _ in range(5):  # and it stays down
        sup.tick()
    assert child.state is ChildState.DOWN and len(said) == 3


def test_a_child_whose_parent_is_killed_drains_and_exits(tmp_path: Path, sample_models: Path) -> None:
    """A parent (here a small Python process) starts a device with --parent-pid and is SIGKILLed."""
    ready = tmp_path / "dev.ready.json"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys, time; "
         "child = subprocess.Popen([sys.executable, '-m', 'fogline', 'device', '--id', 'dev', '--models', "
         f"{str(sample_models)!r}, '--model', 'mlp', '--http-port', '0', '--ready-file', {str(ready)!r}, "
         "'--parent-pid', str(os.getpid())]); print(child.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        import json

        wait_for(ready.is_file, timeout_s=60, what="the device to be ready")
        grpc_port = int(json.loads(ready.read_text())["grpc"].rsplit(":", 1)[1])
        parent.kill()
        parent.wait()
        killed = time.monotonic()
        wait_for(lambda: not _alive(pid), timeout_s=10, what="the orphaned device to exit")
        assert time.monotonic() - killed < 10
        assert port_free("127.0.0.1", grpc_port)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
