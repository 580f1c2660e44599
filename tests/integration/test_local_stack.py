"""``fogline up``: the whole hierarchy (cloud master, GPU worker, two regions of an edge master and two
device nodes) as a child process, used through ``fogline infer``, stopped by SIGTERM."""

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
                               "--edge-port", "0", "--edge-http-port", "0", "--cloud-port", "0",
                               "--cloud-http-port", "0"],
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
    cloud, worker, regions = state["cloud"], state["worker"], state["regions"]
    assert sorted(regions) == ["region-a", "region-b"]
    assert all(len(r["devices"]) == 2 for r in regions.values())
    assert state["edge"] == regions["region-a"]["edge"]  # what `fogline infer` uses by default
    for endpoint in (cloud, state["edge"]):
        assert endpoint["grpc"].rsplit(":", 1)[1] != "0" and endpoint["http"].rsplit(":", 1)[1] != "0"
    members = [cloud, worker, *(m for r in regions.values() for m in (r["edge"], *r["devices"]))]
    pids = {m["pid"] for m in members}
    assert len(pids) == 8 and all(alive(pid) for pid in pids)

    topology = get_json(f"http://{cloud['http']}/v1/topology")
    for name, region in regions.items():
        [edge] = topology["regions"][name]["edges"]
        assert edge["id"] == region["edge"]["id"] and edge["healthy"]
        assert {d["id"] for d in edge["devices"]} == {d["id"] for d in region["devices"]}
    assert [(w["id"], w["healthy"]) for w in topology["workers"]] == [(worker["id"], True)]

    def infer(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "fogline", "infer", *args], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"fogline infer {args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    through_edge = infer("--state", str(state_file), "--model", "cnn")
    assert "tier=device" in through_edge and "route=placement" in through_edge, through_edge
    assert any(f"node={d['id']}" in through_edge for d in regions["region-a"]["devices"]), through_edge
    assert "logits float32 [1, 10]" in through_edge, through_edge
    through_cloud = infer("--url", cloud["grpc"], "--model", "digits-small")
    assert "tier=device" in through_cloud and "probs float32 [1, 10]" in through_cloud, through_cloud
    cascade = infer("--state", str(state_file), "--model", "digits")
    assert "model digits " in cascade and "route=cascade-" in cascade, cascade
    on_worker = infer("--state", str(state_file), "--model", "digits-large")
    assert "tier=cloud node=worker-0 route=placement" in on_worker, on_worker
    calibrated = subprocess.run(
        [sys.executable, "-m", "fogline", "calibrate", "--state", str(state_file), "--model", "digits",
         "--data", str(Path(state["models"]) / "digits-split.npz"), "--target-rate", "0.3"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert calibrated.returncode == 0, calibrated.stderr
    assert "[models.digits]\nmax_prob_below = " in calibrated.stdout, calibrated.stdout

    stopping = time.monotonic()
    up.send_signal(signal.SIGTERM)
    code = up.wait(STOP_TIMEOUT_S)
    assert code == 0, (tmp_path / "up.log").read_text()
    assert time.monotonic() - stopping < STOP_TIMEOUT_S
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout_s=5,
             what=f"every process of the stack ({sorted(pids)}) to be gone")
    assert not state_file.exists()
    # Every child drained (SIGTERM), none had to be killed.
    names = ["cloud", "worker-0", *(f"{r}-{p}" for r in regions for p in ("edge", "device-0", "device-1"))]
    for name in names:
        log = (workdir / "logs" / f"{name}.log").read_text()
        assert "draining" in log and "stopped" in log, f"{name}:\n{log[-2000:]}"
