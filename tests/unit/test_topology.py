"""Topology from the cloud master to the edges: versions that move only on real changes, updates on change
or refresh, a follower that keeps the last topology through any failure of the stream, and the checks
of what the cloud master copies from an edge's REST status into /v1/topology."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fogline.core.control.limits import ControlLimits
from fogline.core.control.peer_status import REASON_MAX_CHARS, edge_devices
from fogline.core.control.registry import EmbeddedRegistry, Load, Member
from fogline.core.control.topology import TopologyFollower, TopologyPublisher, TopologySnapshot, worker_states
from fogline.core.escalation.catalog import Catalog, CatalogEntry, Placement
from fogline.core.escalation.hardness import HardnessRule
from fogline.core.routing.breaker import BreakerSettings, CircuitBreaker
from fogline.core.security.identity import Identity
from fogline.errors import UnavailableError
from tests.polling import until

WORKER = Member(id="w1", service="worker", address="h:1", models=frozenset({"large"}))
EDGE = Member(id="e1", service="edge", address="h:2", region="a")
DIGITS = CatalogEntry(name="digits", placement=Placement.CASCADE, device_model="s", cloud_model="l",
                      rule=HardnessRule(max_prob_below=0.9))


def test_the_version_moves_with_workers_and_catalog_not_with_edges_or_load() -> None:
    registry = EmbeddedRegistry()
    publisher = TopologyPublisher(registry, Catalog())
    assert publisher.version == 1
    registry.register(EDGE)
    registry.heartbeat("e1", Load(in_flight=3))
    assert publisher.version == 1
    registry.register(WORKER)
    assert publisher.version == 2
    registry.heartbeat("w1", Load(in_flight=5))
    publisher.set_catalog(Catalog())
    assert publisher.version == 2
    publisher.set_catalog(Catalog([DIGITS]))
    assert publisher.version == 3
    snapshot = publisher.snapshot()
    assert snapshot.workers == ((WORKER, Load(in_flight=5)),) and snapshot.catalog.names() == ["digits"]


async def test_updates_come_on_every_change_and_at_least_every_refresh() -> None:
    registry = EmbeddedRegistry()
    publisher = TopologyPublisher(registry, Catalog(), refresh_s=0.05)
    updates = publisher.updates()
    assert (await anext(updates)).version == 1
    pending = asyncio.ensure_future(anext(updates))
    await asyncio.sleep(0)
    registry.register(WORKER)
    assert (await asyncio.wait_for(pending, 1.0)).version == 2  # woken by the change
    assert (await asyncio.wait_for(anext(updates), 1.0)).version == 2  # the refresh repeats it
    await updates.aclose()  # type: ignore[attr-defined]


class Source:
    """A TopologySource whose streams are scripted: snapshots to yield, then a failure or silence."""

    def __init__(self) -> None:
        self.streams: asyncio.Queue[tuple[list[TopologySnapshot], str]] = asyncio.Queue()
        self.opened = 0

    async def watch(self, watcher_id: str, region: str) -> AsyncIterator[TopologySnapshot]:
        self.opened += 1
        snapshots, then = await self.streams.get()
        for snapshot in snapshots:
            yield snapshot
        if then == "fail":
            raise UnavailableError("cloud master gone")
        await asyncio.Event().wait()  # silent


def snapshot(version: int, *workers: Member, refresh_s: float = 0.02) -> TopologySnapshot:
    return TopologySnapshot(version=version, workers=tuple((w, Load()) for w in workers), catalog=Catalog([DIGITS]),
                            refresh_s=refresh_s)


async def test_the_follower_keeps_the_last_topology_and_reconnects() -> None:
    source, applied = Source(), []
    follower = TopologyFollower(source, applied.append, watcher_id="e1", region="a", max_backoff_s=0.01,
                                rng=random.Random(0))
    follower.start()
    try:
        source.streams.put_nowait(([snapshot(1, WORKER)], "fail"))
        await until(lambda: follower.last_error is not None)
        assert not follower.connected and follower.last is not None and follower.last.version == 1
        assert follower.status()["catalog"][0]["name"] == "digits"
        assert [s.version for s in applied] == [1]  # a failure applies nothing: the last one stands
        source.streams.put_nowait(([snapshot(2)], "silent"))
        await until(lambda: len(applied) == 2)
        assert follower.connected and applied[-1].workers == ()
        # Silence for a few refresh periods counts as a dead stream: it reconnects.
        await until(lambda: follower.last_error == "the cloud master's topology stream went silent")
        await until(lambda: source.opened == 3)
    finally:
        await follower.stop()


def test_worker_states_are_reused_so_endpoints_see_load_in_place() -> None:
    first = worker_states(snapshot(1, WORKER).workers, {}, now=1.0)
    again = TopologySnapshot(version=1, workers=((WORKER, Load(queue_depth=4)),), catalog=Catalog(), refresh_s=1)
    second = worker_states(again.workers, {s.member.id: s for s in first}, now=2.0)
    assert second[0] is first[0] and first[0].load == Load(queue_depth=4) and first[0].last_seen == 2.0


# --- What the cloud master copies from an edge's REST status into /v1/topology ----------------------

def reported_device(device_id: str = "d1", **changes: object) -> dict[str, object]:
    """A device as an edge master's /v1/status lists it (edge_master.master.EdgeMaster.status)."""
    breaker = CircuitBreaker(BreakerSettings())
    breaker.last_trip_reason = "failure rate 0.6 over 20 calls"
    return {"id": device_id, "address": "10.0.0.5:8001", "http": "10.0.0.5:8002", "models": ["mlp", "cnn"],
            "capacity": 4, "load": {"in_flight": 1, "queue_depth": 0}, "outstanding": 2, "healthy": True,
            "breaker": breaker.snapshot(), **changes}


def test_what_an_edge_really_reports_is_copied_whole() -> None:
    devices = [reported_device("d1"), reported_device("d2", breaker=None, http="", checked=False)]
    assert edge_devices({"ready": True, "devices": devices}, ControlLimits()) == devices


def test_unknown_keys_are_dropped_at_every_level() -> None:
    device = reported_device(script="<img src=x onerror=alert(1)>", secrets={"a": 1})
    device["load"] = {"in_flight": 1, "queue_depth": 0, "extra": "x" * 10_000}
    device["breaker"] = {"state": "open", "trips": 3, "payload": ["x"] * 1000}
    kept = edge_devices({"devices": [device]}, ControlLimits())
    assert kept is not None and set(kept[0]) == {"id", "address", "http", "models", "capacity", "load",
                                                 "outstanding", "healthy", "breaker"}
    assert kept[0]["load"] == {"in_flight": 1, "queue_depth": 0} and kept[0]["breaker"] == {"state": "open", "trips": 3}


@pytest.mark.parametrize("status", [
    None, "devices", [], {"ready": True}, {"devices": "d1"}, {"devices": {"d1": {}}}, {"devices": ["d1"]},
    {"devices": [{"address": "10.0.0.5:8001"}]},  # no id
    {"devices": [reported_device() for _ in range(5)]},  # more devices than a master holds (4 here)
])
def test_a_status_not_of_an_edges_shape_is_malformed(status: object) -> None:
    assert edge_devices(status, ControlLimits(max_members=4)) is None


@pytest.mark.parametrize("changes", [
    {"id": 7}, {"id": "d" * 129}, {"id": ""}, {"id": "a\x1b[31mb"}, {"id": ["d1"]},
    {"address": "attacker"}, {"address": 8001}, {"http": "x:0"}, {"http": None},
    {"models": "mlp"}, {"models": [1]}, {"models": ["m" * 129]}, {"models": [f"m{i}" for i in range(257)]},
    {"capacity": -1}, {"capacity": 2**31}, {"capacity": 1.5}, {"capacity": True}, {"capacity": "4"},
    {"load": [1, 0]}, {"load": {"in_flight": -3}}, {"outstanding": 10**100}, {"healthy": "yes"}, {"healthy": 1},
    {"breaker": "closed"}, {"breaker": {"state": "exploded"}}, {"breaker": {"state": ["open"]}},
    {"breaker": {"failure_rate": float("nan")}}, {"breaker": {"open_until": float("inf")}},
    {"breaker": {"trips": "many"}}, {"breaker": {"last_trip_reason": 42}}, {"checked": "yes"},
])
def test_a_known_field_of_the_wrong_type_or_beyond_its_bounds_makes_the_status_malformed(changes: dict) -> None:
    assert edge_devices({"devices": [reported_device("ok"), reported_device(**changes)]}, ControlLimits()) is None


def test_free_text_is_cut_and_made_printable_rather_than_refused() -> None:
    device = reported_device(breaker={"state": "open", "last_trip_reason": "boom\n" * 1000})
    kept = edge_devices({"devices": [device]}, ControlLimits())
    assert kept is not None
    reason = kept[0]["breaker"]["last_trip_reason"]
    assert len(reason) == REASON_MAX_CHARS and reason.isprintable() and reason.startswith("boom?boom?")


def test_the_cloud_shows_a_malformed_edge_unhealthy_with_no_devices() -> None:
    from cloud_master.master import _edge_report

    good = {"ready": True, "devices": [reported_device()]}
    assert _edge_report(good, ControlLimits()) == {"healthy": True, "devices": [reported_device()]}
    assert _edge_report({"ready": "yes", "devices": []}, ControlLimits()) == {"healthy": False, "devices": []}
    assert _edge_report({"ready": True, "devices": [{"id": 1}]}, ControlLimits()) == {"healthy": False, "devices": []}
    assert _edge_report(None, ControlLimits()) == {"healthy": False, "devices": []}


def test_with_tls_the_cloud_reads_each_status_verifying_the_member_that_registered_it(tmp_path: Path) -> None:
    from cloud_master.master import _status_reads
    from tests.adapters.test_http_tls import TinyCA

    members = [Member(id="e1", service="edge", region="a", address="h:1", http_address="h:2"),
               Member(id="w1", service="worker", region="a", address="h:3", http_address="h:4"),
               Member(id="e2", service="edge", region="a", address="h:5", http_address="h:6"),
               Member(id="e3", service="edge", region="b", address="h:7", http_address="h:6"),  # claims e2's
               Member(id="bad/id", service="edge", region="a", address="h:8", http_address="h:9")]
    assert _status_reads(members, None) == (["h:2", "h:4", "h:6", "h:6", "h:9"], {})
    from fogline.adapters.tls.http import client_ssl_context

    context = client_ssl_context(TinyCA().material(tmp_path, Identity(service="cloud", id="c")))
    addresses, tls = _status_reads(members, context)
    assert addresses == ["h:2", "h:4"] and tls["ssl"] is context
    assert tls["server_names"] == {"h:2": "e1.a.edge.fogline", "h:4": "w1.worker.fogline"}
