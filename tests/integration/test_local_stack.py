"""``fogline up``: a whole local stack as a child process, used through ``fogline infer``, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import get_json, wait_for

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stack_pids(workdir: Path) -> set[int]:
    """Every child pid the stack announced (its ready files), whether or not stack.json exists yet."""
    pids = set()
    for ready in (workdir / "run").glob("*.json"):
        try:
            pids.add(int(json.loads(ready.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            continue
    return pids


@pytest.fixture
def fogline_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``fogline up`` on free ports in a fresh workdir; whatever is left of it is killed at teardown."""
    workdir = tmp_path / "stack"
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "fogline", "up", "--workdir", str(workdir),
                               "--edge-port", "0", "--edge-http-port", "0"],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, "FOGLINE_LOG_LEVEL": "INFO"})  # the children log draining
    try:
        yield up, workdir
    finally:
        children = stack_pids(workdir)
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)  # it stops its children itself
            try:
                up.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(10)
        for pid in children:  # orphans, if `fogline up` could not stop them
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_fogline_up_infer_and_stop(fogline_up: tuple[subprocess.Popen[bytes], Path], tmp_path: Path) -> None:
    up, workdir = fogline_up
    state_file = workdir / "stack.json"

    def started() -> bool:
        if up.poll() is not None:
            raise AssertionError(f"fogline up exited with {up.returncode}:\n{(tmp_path / 'up.log').read_text()}")
        return state_file.is_file()

    wait_for(started, timeout_s=START_TIMEOUT_S, interval_s=0.1, what="fogline up to write stack.json")
    state = json.loads(state_file.read_text())
    assert state["pid"] == up.pid
    edge, devices = state["edge"], state["devices"]
    assert len(devices) == 2
    assert edge["grpc"].rsplit(":", 1)[1] != "0" and edge["http"].rsplit(":", 1)[1] != "0"
    pids = {edge["pid"], *(d["pid"] for d in devices)}
    assert len(pids) == 3 and all(alive(pid) for pid in pids)
    registered = {d["id"] for d in get_json(f"http://{edge['http']}/v1/status")["devices"]}
    assert registered == {d["id"] for d in devices}

    infer = subprocess.run([sys.executable, "-m", "fogline", "infer", "--state", str(state_file), "--model", "cnn"],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert infer.returncode == 0, f"fogline infer failed:\n{infer.stdout}\n{infer.stderr}"
    assert "tier=device" in infer.stdout, infer.stdout
    assert "route=placement" in infer.stdout, infer.stdout
    assert any(f"node={d['id']}" in infer.stdout for d in devices), infer.stdout
    assert "logits float32 [1, 10]" in infer.stdout, infer.stdout

    stopping = time.monotonic()
    up.send_signal(signal.SIGTERM)
    code = up.wait(STOP_TIMEOUT_S)
    assert code == 0, (tmp_path / "up.log").read_text()
    assert time.monotonic() - stopping < STOP_TIMEOUT_S
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout_s=5,
             what=f"every process of the stack ({sorted(pids)}) to be gone")
    assert not state_file.exists()
    # Every child drained (SIGTERM), none had to be killed.
    for name in ("edge", "device-0", "device-1"):
        log = (workdir / "logs" / f"{name}.log").read_text()
        assert "draining" in log and "stopped" in log, f"{name}:\n{log[-2000:]}"
