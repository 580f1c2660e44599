"""Topology from the cloud master to the edges: versions that move only on real changes, updates on change
or refresh, and a follower that keeps the last topology through any failure of the stream."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from fogline.core.control.registry import EmbeddedRegistry, Load, Member
from fogline.core.control.topology import TopologyFollower, TopologyPublisher, TopologySnapshot, worker_states
from fogline.core.escalation.catalog import Catalog, CatalogEntry, Placement
from fogline.core.escalation.hardness import HardnessRule
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
