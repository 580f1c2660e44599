"""``fogline up``: the whole hierarchy (cloud master, GPU worker, two regions of an edge master and two
device nodes) as a child process, used through ``fogline infer``, stopped by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.stackrun import FREE_PORTS, STOP_TIMEOUT_S, Up, alive
from tests.polling import wait_for
from tests.processes import get_json

pytestmark = pytest.mark.integration


@pytest.fixture
def fogline_up(tmp_path: Path) -> Iterator[Up]:
    """``fogline up`` on free ports in a fresh workdir; whatever is left of it is killed at teardown."""
    up = Up(tmp_path / "stack", tmp_path / "up.log", *FREE_PORTS)
    try:
        yield up
    finally:
        up.cleanup()


def test_fogline_up_infer_and_stop(fogline_up: Up) -> None:
    state, state_file, workdir = fogline_up.wait_up(), fogline_up.state_file, fogline_up.workdir
    assert state["pid"] == fogline_up.process.pid and state["down"] == []
    cloud, worker, regions = state["cloud"], state["worker"], state["regions"]
    assert sorted(regions) == ["region-a", "region-b"]
    assert all(len(r["devices"]) == 2 for r in regions.values())
    assert state["edge"] == regions["region-a"]["edge"]  # what `fogline infer` uses by default
    for endpoint in (cloud, state["edge"]):
        assert endpoint["grpc"].rsplit(":", 1)[1] != "0" and endpoint["http"].rsplit(":", 1)[1] != "0"
    members = [cloud, worker, *(m for r in regions.values() for m in (r["edge"], *r["devices"]))]
    pids = {m["pid"] for m in members}
    assert len(pids) == 8 and all(alive(pid) for pid in pids)

    topology = get_json(f"http://{cloud['http']}/v1/topology", tls=state["tls"])
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
    through_cloud = infer("--url", cloud["grpc"], "--state", str(state_file), "--model", "digits-small")
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
    code = fogline_up.stop(signal.SIGTERM)
    assert code == 0, fogline_up.output()
    assert time.monotonic() - stopping < STOP_TIMEOUT_S
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout_s=5,
             what=f"every process of the stack ({sorted(pids)}) to be gone")
    assert not state_file.exists()
    # Every child drained (SIGTERM), none had to be killed.
    names = ["cloud", "worker-0", *(f"{r}-{p}" for r in regions for p in ("edge", "device-0", "device-1"))]
    for name in names:
        log = (workdir / "logs" / f"{name}.log").read_text()
        assert "draining" in log and "stopped" in log, f"{name}:\n{log[-2000:]}"
