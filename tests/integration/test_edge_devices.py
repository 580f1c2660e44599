"""An edge master and device nodes as real processes: routing, affinity, batching, failover, draining,
and membership changes under load, checked against ONNX Runtime run in-process."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fogline.sdk.client import Client
from tests.integration.loadgen import Load, Reference, check_results, make_inputs, start_region
from tests.polling import poll
from tests.processes import ProcessGroup, get_json, registered_devices

pytestmark = pytest.mark.integration

CLIENT_TIMEOUT_S = 5.0


def device_status(edge_http: str) -> dict[str, dict]:
    return {d["id"]: d for d in get_json(f"{edge_http}/v1/status")["devices"]}


async def test_requests_spread_over_devices(processes: ProcessGroup, sample_models: Path,
                                            reference: Reference) -> None:
    edge, devices = start_region(processes, sample_models)
    ids = {d.name for d in devices}
    status = get_json(f"{edge.http}/v1/status")
    assert {d["id"] for d in status["devices"]} == ids
    assert status["ready"] is True and status["models"] == ["cnn", "mlp"]

    inputs = {"mlp": make_inputs("mlp", 200, seed=1)}
    async with Client(edge.grpc, timeout_s=CLIENT_TIMEOUT_S) as client:
        outcomes = await Load(client, inputs, concurrency=16, max_requests=200).run()

    assert len(outcomes) == 200
    check_results(outcomes, inputs, reference)
    for o in outcomes:
        assert o.result.tier == "device", o.result.parameters
        assert o.result.node in ids, o.result.parameters
        assert o.result.route == "placement", o.result.parameters
        assert o.result.model == "mlp"
    served = {node: sum(o.node == node for o in outcomes) for node in ids}
    assert all(count >= 20 for count in served.values()), f"requests not spread over both devices: {served}"

    # The edge's view: nothing left outstanding, and both device nodes count the requests they ran.
    assert all(d["outstanding"] == 0 for d in device_status(edge.http).values())
    ran = {d.name: get_json(f"{d.http}/v1/status")["models"]["mlp"]["requests"] for d in devices}
    assert ran == served


async def test_session_affinity(processes: ProcessGroup, sample_models: Path, reference: Reference) -> None:
    edge, devices = start_region(processes, sample_models)
    ids = {d.name for d in devices}
    keys = [f"user-{i}" for i in range(20)]
    inputs = {"mlp": make_inputs("mlp", 8, seed=2)}
    async with Client(edge.grpc, timeout_s=CLIENT_TIMEOUT_S) as client:
        load = Load(client, inputs, concurrency=16, max_requests=len(keys) * 6,
                    session_of=lambda seq: keys[seq % len(keys)])
        outcomes = await load.run()
    check_results(outcomes, inputs, reference)

    nodes_of: dict[str, set[str]] = {}
    for o in outcomes:
        assert o.result.tier == "device" and o.result.node in ids, o.result.parameters
        nodes_of.setdefault(str(o.session), set()).add(o.result.node)
    assert set(nodes_of) == set(keys)
    split = {key: nodes for key, nodes in nodes_of.items() if len(nodes) != 1}
    assert not split, f"a session key was served by more than one device: {split}"
    assert {next(iter(nodes)) for nodes in nodes_of.values()} == ids, \
        f"20 session keys all went to one device: {nodes_of}"


def _batch_histogram(metrics_text: str, model: str) -> tuple[float, float]:
    """(batches of one request, all batches) of ``model`` from fogline_batch_size."""
    ones = total = None
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "fogline_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "fogline_batch_size_bucket" and float(sample.labels["le"]) == 1.0:
                ones = sample.value
            elif sample.name == "fogline_batch_size_count":
                total = sample.value
    assert ones is not None and total is not None, f"no fogline_batch_size for {model}:\n{metrics_text}"
    return ones, total


async def test_dynamic_batching_batches(processes: ProcessGroup, sample_models: Path,
                                        reference: Reference) -> None:
    device = processes.device("solo", sample_models)  # stand-alone: no edge master
    inputs = {"cnn": make_inputs("cnn", 64, seed=3)}
    rounds = 3
    async with Client(device.grpc, timeout_s=30) as client:
        for _ in range(rounds):
            outcomes = await Load(client, inputs, concurrency=64, max_requests=64).run()
            check_results(outcomes, inputs, reference)
            assert all(o.result.tier == "device" and o.result.node == "solo" for o in outcomes)

    stats = get_json(f"{device.http}/v1/status")["models"]["cnn"]
    assert stats["requests"] == 64 * rounds, stats
    assert stats["largest_batch"] > 1, f"64 concurrent requests never ran together: {stats}"
    assert stats["batches"] < stats["requests"], stats
    assert stats["mean_batch_size"] > 1.0, stats
    assert stats["rejected"] == 0 and stats["expired"] == 0, stats

    with urllib.request.urlopen(f"{device.http}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    ones, total = _batch_histogram(text, "cnn")
    assert total == stats["batches"], (total, stats)
    assert total > ones, f"every batch in fogline_batch_size had one request ({ones} of {total})"


def _mixed_inputs() -> dict:
    return {"mlp": make_inputs("mlp", 16, seed=4), "cnn": make_inputs("cnn", 16, seed=5)}


async def _warm_load(client: Client, ids: set[str], inputs: dict) -> Load:
    """A mixed mlp/cnn load at concurrency 8 through the edge, once every device has served some."""
    # Bounded by the test's stop conditions; the caps only guard against a runaway test.
    load = Load(client, inputs, concurrency=8, max_requests=20_000, max_seconds=45).start()
    await load.wait_until(lambda ld: len(ld.ok()) >= 100 and all(ld.by_node()[i] >= 5 for i in ids),
                          timeout_s=30, what="100 requests served by both devices")
    return load


async def test_sigkill_device_under_load(processes: ProcessGroup, sample_models: Path,
                                         reference: Reference) -> None:
    edge, (victim, survivor) = start_region(processes, sample_models)
    inputs = _mixed_inputs()
    async with Client(edge.grpc, timeout_s=CLIENT_TIMEOUT_S) as client:
        load = await _warm_load(client, {victim.name, survivor.name}, inputs)

        victim.process.kill()
        await asyncio.to_thread(victim.process.wait, 10)
        killed_at = time.monotonic()  # reaped: nothing started after this can run on the victim

        # Dropped by the edge once its heartbeats stop for the TTL (3 s by default).
        await poll(lambda: victim.name not in registered_devices(edge), timeout_s=15,
                   what=f"the edge master to drop the killed device {victim.name}")
        dropped_at = time.monotonic()
        await load.wait_until(lambda ld: sum(o.started >= dropped_at for o in ld.outcomes) >= 50,
                              timeout_s=30, what="50 requests after the killed device was dropped")
        outcomes = await load.finish()

    check_results(outcomes, inputs, reference)  # zero failures, right answers
    after = [o for o in outcomes if o.started >= killed_at]
    assert len(after) >= 50
    wrong = [(o.seq, o.node) for o in after if o.node != survivor.name]
    assert not wrong, f"requests sent after the kill were not served by {survivor.name}: {wrong[:10]}"
    assert all(o.result.tier == "device" for o in outcomes)
    assert {o.node for o in outcomes} == {victim.name, survivor.name}
    assert set(device_status(edge.http)) == {survivor.name}
    assert edge.process.poll() is None  # the edge lives on


async def test_sigterm_device_drains_under_load(processes: ProcessGroup, sample_models: Path,
                                                reference: Reference) -> None:
    grace_s = 10.0
    ttl_s = 30.0  # long, so only deregistration (not expiry) can remove the draining device in time
    edge, (victim, survivor) = start_region(processes, sample_models, edge_args=("--member-ttl-s", str(ttl_s)),
                                            device_args=("--drain-grace-s", str(grace_s)))
    inputs = _mixed_inputs()
    async with Client(edge.grpc, timeout_s=CLIENT_TIMEOUT_S) as client:
        load = await _warm_load(client, {victim.name, survivor.name}, inputs)

        signalled_at = time.monotonic()
        victim.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(victim.process.wait, grace_s + 20)
        exited_after = time.monotonic() - signalled_at
        exited_at = time.monotonic()
        await poll(lambda: victim.name not in registered_devices(edge), timeout_s=5,
                   what=f"the edge master to drop the drained device {victim.name}")
        gone_after = time.monotonic() - signalled_at
        await load.wait_until(lambda ld: sum(o.started >= exited_at for o in ld.outcomes) >= 50,
                              timeout_s=30, what="50 requests after the drained device exited")
        outcomes = await load.finish()

    assert code == 0, f"draining device exited with {code}:\n{victim.log()[-3000:]}"
    assert exited_after < grace_s, f"draining took {exited_after:.1f}s, grace is {grace_s}s"
    assert gone_after < ttl_s / 3, f"drained device left the edge's status after {gone_after:.1f}s"
    log = victim.log()
    assert "draining" in log and "stopped" in log, log[-3000:]
    edge_log = edge.log()
    assert f"deregistered {victim.name}" in edge_log, edge_log[-3000:]
    assert "expired" not in edge_log

    check_results(outcomes, inputs, reference)  # zero failures, right answers
    after = [o for o in outcomes if o.started >= exited_at]
    assert len(after) >= 50
    wrong = [(o.seq, o.node) for o in after if o.node != survivor.name]
    assert not wrong, f"requests sent after the drain were not served by {survivor.name}: {wrong[:10]}"
    assert {o.node for o in outcomes} == {victim.name, survivor.name}
    assert set(device_status(edge.http)) == {survivor.name}


async def test_restarted_and_added_devices_get_traffic(processes: ProcessGroup, sample_models: Path,
                                                       reference: Reference) -> None:
    edge, (_, d2) = start_region(processes, sample_models)
    old = device_status(edge.http)["d2"]

    # d2 dies and comes back on new ports, usually before the edge expires it (then its registration
    # replaces the old one; otherwise it registers afresh).
    d2.process.kill()
    d2.process.wait(10)
    d2_new = processes.device("d2", sample_models, edge, "test")
    new_addresses = (d2_new.grpc, d2_new.endpoints["http"])
    assert new_addresses != (old["address"], old["http"])

    def registered_anew() -> bool:
        d2_now = device_status(edge.http).get("d2", {})
        return (d2_now.get("address"), d2_now.get("http")) == new_addresses

    await poll(registered_anew, timeout_s=20, what="the restarted d2 to register its new addresses")
    # A device that was not there before joins.
    d3 = processes.device("d3", sample_models, edge, "test")
    await poll(lambda: registered_devices(edge) == {"d1", "d2", "d3"}, timeout_s=20,
               what="the new device d3 to register")

    inputs = {"mlp": make_inputs("mlp", 16, seed=6)}
    async with Client(edge.grpc, timeout_s=CLIENT_TIMEOUT_S) as client:
        load = Load(client, inputs, concurrency=8, max_requests=2000, max_seconds=60).start()
        await load.wait_until(lambda ld: ld.by_node()["d2"] >= 10 and ld.by_node()["d3"] >= 10,
                              timeout_s=30, what="the restarted d2 and the new d3 to serve requests")
        outcomes = await load.finish()
    check_results(outcomes, inputs, reference)
    assert all(o.result.tier == "device" and o.node in {"d1", "d2", "d3"} for o in outcomes)
    # The d2 answers came from the new process (the old one is dead): it counts them itself.
    assert get_json(f"{d2_new.http}/v1/status")["models"]["mlp"]["requests"] >= 10
    assert get_json(f"{d3.http}/v1/status")["models"]["mlp"]["requests"] >= 10
