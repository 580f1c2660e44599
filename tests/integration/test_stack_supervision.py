"""``fogline up`` supervises: a child killed under load is restarted while the rest keep serving, the
stack restarts at once on its fixed ports, and SIGHUP or a SIGKILL of the stack leaves nothing behind.

The first two tests share one stack on free ports; the others each start one on the default ports."""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fogline.adapters.ports import port_free
from fogline.core.escalation.catalog import load_catalog
from fogline.local import digits
from fogline.sdk.client import Client, SyncClient
from tests.integration.loadgen import Load, Reference, check_results, make_inputs
from tests.integration.stackrun import DEFAULT_PORTS, Up, alive, client_tls, running_stack, seed_models
from tests.polling import poll, wait_for
from tests.processes import get_json

pytestmark = pytest.mark.integration

INPUTS = {"mlp": make_inputs("mlp", 16, seed=3), "cnn": make_inputs("cnn", 8, seed=4)}
TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sample_models: Path, digits_models: Path) -> Iterator[Up]:
    with running_stack(tmp_path_factory.mktemp("supervised"), sample_models, digits_models) as up:
        yield up


def pids_by_name(state: dict[str, Any]) -> dict[str, int]:
    members = [state["cloud"], state["worker"], *(m for r in state["regions"].values()
                                                 for m in (r["edge"], *r["devices"]))]
    return {m["id"]: m["pid"] for m in members}


def serving_devices(edge_http: str, tls: dict[str, str] | None) -> set[str]:
    return {d["id"] for d in get_json(f"http://{edge_http}/v1/status", tls=tls)["devices"] if d.get("healthy", True)}


async def test_a_killed_device_is_restarted_and_no_request_fails(stack: Up, reference: Reference) -> None:
    state = stack.state()
    edge = state["regions"]["region-a"]["edge"]
    victim = "region-a-device-1"
    before = pids_by_name(state)
    async with Client(edge["grpc"], timeout_s=TIMEOUT_S, tls=client_tls(state)) as client:
        load = Load(client, INPUTS, concurrency=6, max_requests=100_000, max_seconds=60).start()
        await load.wait_until(lambda lo: {"region-a-device-0", victim} <= set(lo.by_node()), 15,
                              "traffic on both devices of region-a")
        killed = time.monotonic()
        stack.child_pids()
        os.kill(before[victim], signal.SIGKILL)

        def back() -> bool:
            now = pids_by_name(stack.state())
            return now[victim] != before[victim] and alive(now[victim]) and victim in serving_devices(edge["http"], state["tls"])
        await poll(back, 15, f"{victim} to be restarted and registered")
        restarted = time.monotonic()
        await load.wait_until(lambda lo: lo.by_node(since=restarted)[victim] >= 20, 15 - (restarted - killed),
                              f"traffic on the restarted {victim}")
        took = time.monotonic() - killed
        outcomes = await load.finish()
    check_results(outcomes, INPUTS, reference)
    assert took < 15, f"{victim} took {took:.1f} s to take traffic again"
    assert stack.process.poll() is None
    after = pids_by_name(stack.state())
    assert {n: p for n, p in after.items() if n != victim} == {n: p for n, p in before.items() if n != victim}
    assert stack.state()["down"] == []
    assert f"fogline up: {victim} exited with signal SIGKILL; restart 1 in 0.5 s." in stack.output()


def test_a_killed_worker_degrades_cascades_meanwhile_and_serves_hard_inputs_again(
        stack: Up, digits_models: Path) -> None:
    state = stack.state()
    threshold = load_catalog(digits_models / digits.CATALOG_FILE).entries["digits"].rule.max_prob_below
    split = digits.load_split(digits_models)
    hard = split.x_test[digits.small_probabilities(digits_models, split.x_test).max(axis=1) < threshold]
    edge = state["regions"]["region-a"]["edge"]
    with SyncClient(edge["grpc"], timeout_s=TIMEOUT_S, tls=client_tls(state)) as client:
        assert client.infer("digits", {"input": hard[:1]}).route == "cascade-hard"
        os.kill(state["worker"]["pid"], signal.SIGKILL)
        killed = time.monotonic()
        degraded: list[float] = []
        answers = []
        while time.monotonic() - killed < 20:
            started = time.perf_counter()
            result = client.infer("digits", {"input": hard[len(answers) % len(hard)][None, :]})
            answers.append(result)
            if result.route == "degraded":
                degraded.append(time.perf_counter() - started)
            elif result.route == "cascade-hard" and result.node == "worker-0" and degraded:
                break
        back_after = time.monotonic() - killed
    routes = {r.route for r in answers}
    assert routes <= {"degraded", "cascade-hard"}, routes
    assert answers[-1].route == "cascade-hard" and answers[-1].tier == "cloud", \
        f"no hard input served by the cloud within 20 s of the kill: {routes}"
    assert all(r.degraded and r.tier == "device" for r in answers if r.route == "degraded")
    assert len(degraded) >= 5 and statistics.median(degraded) < 0.050, degraded
    assert back_after < 20
    wait_for(lambda: stack.state()["worker"]["pid"] != state["worker"]["pid"], timeout_s=5,
             what="the state file to name the restarted worker")
    assert stack.process.poll() is None


@pytest.fixture
def default_ports() -> dict[str, int]:
    taken = [f"{port} ({flag})" for flag, port in DEFAULT_PORTS.items() if not port_free("127.0.0.1", port)]
    if taken:
        pytest.skip(f"the default ports of `fogline up` are in use on this machine: {', '.join(taken)}")
    return DEFAULT_PORTS


@pytest.fixture
def stacks(tmp_path: Path, sample_models: Path, digits_models: Path) -> Iterator[list[Up]]:
    """``fogline up`` runs of one test, all in one workdir with models already built; cleaned up after."""
    seed_models(tmp_path / "stack", sample_models, digits_models)
    runs: list[Up] = []
    try:
        yield runs
    finally:
        for up in runs:
            up.cleanup()


def start(stacks: list[Up], tmp_path: Path) -> tuple[Up, dict[str, Any]]:
    up = Up(tmp_path / "stack", tmp_path / f"up-{len(stacks)}.log")
    stacks.append(up)
    return up, up.wait_up()


def some_traffic(state: dict[str, Any]) -> None:
    with SyncClient(state["edge"]["grpc"], timeout_s=TIMEOUT_S, tls=client_tls(state)) as client:
        for x in INPUTS["mlp"][:5]:
            assert client.infer("mlp", {"input": x}).tier == "device"
    with SyncClient(state["cloud"]["grpc"], timeout_s=TIMEOUT_S, tls=client_tls(state)) as client:
        assert client.infer("cnn", {"input": INPUTS["cnn"][0]}).outputs["logits"].shape == (1, 10)


def assert_all_gone(up: Up, within_s: float) -> None:
    pids = up.child_pids() | {up.process.pid}
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout_s=within_s,
             what=f"every process of the stack ({sorted(pids)}) to exit")
    wait_for(lambda: all(port_free("127.0.0.1", port) for port in DEFAULT_PORTS.values()), timeout_s=1,
             what="the default ports to be free")


def test_the_stack_restarts_at_once_on_its_fixed_ports_and_stops_on_hangup(
        default_ports: dict[str, int], stacks: list[Up], tmp_path: Path) -> None:
    first, state = start(stacks, tmp_path)
    assert state["edge"]["grpc"].endswith(":8001") and state["cloud"]["http"].endswith(":8010")
    some_traffic(state)

    second = Up(tmp_path / "other", tmp_path / "other.log")  # while the first runs: refused, in one line
    stacks.append(second)
    assert second.process.wait(30) == 2
    [line] = second.output().strip().splitlines()
    assert "8001 (--edge-port)" in line and "is another `fogline up` running?" in line, line
    assert first.process.poll() is None

    assert first.stop(signal.SIGTERM) == 0, first.output()
    again, state = start(stacks, tmp_path)  # at once: the ports still hold connections in TIME-WAIT
    some_traffic(state)
    assert "address already in use" not in again.output().lower()

    again.child_pids()
    again.process.send_signal(signal.SIGHUP)  # a closed terminal: stops like SIGTERM
    signalled = time.monotonic()
    assert again.process.wait(10) == 0, again.output()
    assert_all_gone(again, within_s=10 - (time.monotonic() - signalled))
    assert not again.state_file.exists()


def test_a_killed_stack_leaves_no_process_and_no_port(default_ports: dict[str, int], stacks: list[Up],
                                                      tmp_path: Path) -> None:
    up, state = start(stacks, tmp_path)
    some_traffic(state)
    up.child_pids()
    up.process.kill()
    assert_all_gone(up, within_s=10)  # its children see their parent gone, drain and exit
