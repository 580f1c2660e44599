"""The chaos suite: real processes under concurrent load while a device node dies, hangs, slows down or
flaps, and while an edge master dies. Each test asserts that no request is lost and none waits past
its deadline. (A killed GPU worker, and a region with every device down, are in test_escalation.py.)

The edge masters here run with a short attempt timeout and a long member TTL, so that it is the
circuit breakers, not registry expiry, that take a sick device out of routing."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from pathlib import Path

import pytest

from fogline.local.launch import Launched
from fogline.sdk.client import Client
from tests.integration.loadgen import Load, make_inputs
from tests.polling import poll, wait_for
from tests.processes import ProcessGroup, get_json, registered_devices

pytestmark = pytest.mark.integration

CLIENT_TIMEOUT_S = 3.0
ATTEMPT_TIMEOUT_S = 0.3
EDGE_ARGS = ("--attempt-timeout-s", str(ATTEMPT_TIMEOUT_S), "--member-ttl-s", "30")
INPUTS = {"mlp": make_inputs("mlp", 16, seed=9)}


def region(processes: ProcessGroup, models: Path, *edge_args: str, slow: str | None = None,
           name: str = "edge", region_name: str = "test") -> tuple[Launched, dict[str, Launched]]:
    edge = processes.edge(name, region_name, *EDGE_ARGS, *edge_args)
    devices = {}
    for device in ("d1", "d2"):
        extra = ("--fault-delay-ms", "100") if device == slow else ()
        devices[device] = processes.device(f"{region_name}-{device}" if name != "edge" else device, models, edge,
                                           region_name, *extra)
    wait_for(lambda: len(registered_devices(edge)) == 2, timeout_s=30, what="both devices to register")
    return edge, devices


def breaker(edge: Launched, device: str) -> dict:
    (status,) = [d for d in get_json(f"{edge.http}/v1/status")["devices"] if d["id"] == device]
    return status["breaker"]


def latencies(load: Load) -> list[float]:
    return sorted(o.finished - o.started for o in load.outcomes)


def assert_nothing_lost_or_late(load: Load) -> None:
    assert not load.failures(), f"{len(load.failures())} of {len(load.outcomes)} failed: {load.failures()[:5]}"
    worst = max(latencies(load))
    assert worst < CLIENT_TIMEOUT_S, f"a request took {worst:.3f}s, past its {CLIENT_TIMEOUT_S}s deadline"


async def test_a_killed_device_loses_no_request(processes: ProcessGroup, sample_models: Path) -> None:
    edge, devices = region(processes, sample_models)
    async with Client(edge.grpc, timeout_s=CLIENT_TIMEOUT_S) as client:
        load = Load(client, INPUTS, concurrency=8, max_requests=100_000, max_seconds=60).start()
        await load.wait_until(lambda lo: len(lo.by_node()) == 2, 10, "traffic on both devices")
        devices["d1"].process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await load.wait_until(lambda lo: lo.by_node(since=killed + 0.5)["d2"] >= 200, 20, "traffic after the kill")
        await load.finish()
    assert_nothing_lost_or_late(load)
    assert load.by_node(since=killed + 0.5)["d1"] == 0


async def test_a_hung_device_is_ejected_and_rejoins_after_a_probe(processes: ProcessGroup,
                                                                   sample_models: Path) -> None:
    edge, devices = region(processes, sample_models)
    hung = devices["d1"].process
    async with Client(edge.grpc, timeout_s=CLIENT_TIMEOUT_S) as client:
        load = Load(client, INPUTS, concurrency=8, max_requests=100_000, max_seconds=60).start()
        await load.wait_until(lambda lo: len(lo.by_node()) == 2, 10, "traffic on both devices")
        os.kill(hung.pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            await poll(lambda: breaker(edge, "d1")["state"] == "open", 10, "d1's circuit to open")
            detected = time.monotonic() - stopped
            await load.wait_until(lambda lo: lo.by_node(since=time.monotonic() - 0.5)["d2"] >= 50, 10,
                                  "traffic to go on without d1")
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        resumed = time.monotonic()
        await load.wait_until(lambda lo: lo.by_node(since=resumed)["d1"] >= 20, 20, "d1 to serve again")
        await load.finish()
    assert_nothing_lost_or_late(load)
    assert detected < 3.0
    after = breaker(edge, "d1")
    assert after["state"] == "closed" and after["trips"] >= 1
    # The requests caught on the hung device waited one attempt timeout, then ran elsewhere.
    assert max(latencies(load)) < ATTEMPT_TIMEOUT_S + 1.0


async def test_a_slow_device_is_ejected_on_slow_calls_and_traffic_shifts(processes: ProcessGroup,
                                                                          sample_models: Path) -> None:
    edge, _ = region(processes, sample_models, "--slow-call-s", "0.05", slow="d1")
    async with Client(edge.grpc, timeout_s=CLIENT_TIMEOUT_S) as client:
        load = Load(client, INPUTS, concurrency=4, max_requests=100_000, max_seconds=60).start()
        await poll(lambda: breaker(edge, "d1")["trips"] >= 1, 20, "d1's circuit to open on slow calls")
        tripped = time.monotonic()
        await load.wait_until(lambda lo: lo.by_node(since=tripped)["d2"] >= 300, 20, "traffic after the trip")
        await load.finish()
    assert_nothing_lost_or_late(load)
    # It opened on slow calls; a half-open probe since may have timed out on the same slow device and
    # opened it again, which is the last reason then (seen on a loaded 2-core CI run).
    reason = breaker(edge, "d1")["last_trip_reason"] or ""
    assert "slow" in reason or reason == "probe_timeout", reason
    after = load.by_node(since=tripped)
    assert after["d1"] < 0.1 * after["d2"], f"traffic did not shift away from the slow device: {dict(after)}"


async def test_a_flapping_device_stays_out_longer_each_time_and_spares_the_p99(processes: ProcessGroup,
                                                                                 sample_models: Path) -> None:
    edge, devices = region(processes, sample_models)
    flapping = devices["d1"].process
    async with Client(edge.grpc, timeout_s=CLIENT_TIMEOUT_S) as client:
        load = Load(client, INPUTS, concurrency=8, max_requests=100_000, max_seconds=60).start()
        await load.wait_until(lambda lo: len(lo.by_node()) == 2, 10, "traffic on both devices")
        trips = []
        try:
            for _ in range(4):  # hung for 1.5 s, then back for 1.5 s: each time its probes fail at first
                os.kill(flapping.pid, signal.SIGSTOP)
                await asyncio.sleep(1.5)  # NOTE: the fault's own duration, not a wait for the system
                trips.append(breaker(edge, "d1")["consecutive_trips"])
                os.kill(flapping.pid, signal.SIGCONT)
                await asyncio.sleep(1.5)
        finally:
            os.kill(flapping.pid, signal.SIGCONT)
        await load.finish()
    assert_nothing_lost_or_late(load)
    assert trips[-1] >= 2 and trips == sorted(trips), f"open time did not grow with each trip: {trips}"
    all_latencies = latencies(load)
    p99 = all_latencies[int(0.99 * (len(all_latencies) - 1))]
    assert p99 < ATTEMPT_TIMEOUT_S + 0.2, f"p99 {p99:.3f}s: the flapping device drags the region"
    assert statistics.median(all_latencies) < 0.1


async def test_the_sdk_fails_over_to_another_region_when_an_edge_master_dies(processes: ProcessGroup,
                                                                            sample_models: Path) -> None:
    edge_a, _ = region(processes, sample_models, name="edge-a", region_name="a")
    edge_b, _ = region(processes, sample_models, name="edge-b", region_name="b")
    async with Client([edge_a.grpc, edge_b.grpc], timeout_s=CLIENT_TIMEOUT_S) as client:
        load = Load(client, INPUTS, concurrency=8, max_requests=100_000, max_seconds=60).start()
        await load.wait_until(lambda lo: len(lo.ok()) >= 100, 10, "traffic through region a")
        assert {o.result.endpoint for o in load.ok()} == {edge_a.grpc}
        edge_a.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await load.wait_until(lambda lo: sum(o.started > killed for o in lo.ok()) >= 300, 20,
                              "traffic through region b")
        await load.finish()
    assert_nothing_lost_or_late(load)
    assert {o.result.endpoint for o in load.ok() if o.started > killed + 0.1} == {edge_b.grpc}
