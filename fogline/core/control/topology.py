"""What the cloud master tells its edge masters: the GPU workers they may escalate to and the model
catalog (``fogline.control.v1.Control/WatchTopology``).

The cloud master's :class:`TopologyPublisher` numbers each change of workers or catalog and wakes
every watcher; between changes it repeats the current topology every ``refresh_s`` with the
workers' latest load. An edge master's :class:`TopologyFollower` applies each snapshot, keeps the
last one when the cloud master goes away, and reconnects with capped, jittered backoff; a stream
that stays silent for ``silence_refreshes`` refresh periods counts as dead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from fogline.core.control.backoff import Backoff
from fogline.core.control.registry import EmbeddedRegistry, Load, Member, MemberState
from fogline.core.escalation.catalog import Catalog, describe
from fogline.core.tasks import stop_task
from fogline.errors import FoglineError

log = logging.getLogger(__name__)

WORKER_SERVICE = "worker"


@dataclass(frozen=True, kw_only=True)
class TopologySnapshot:
    """One state of the topology: the GPU workers with their last load, and the model catalog."""

    version: int
    """Increases with every change of workers or catalog."""
    workers: tuple[tuple[Member, Load], ...]
    catalog: Catalog
    refresh_s: float
    """The publisher sends at least this often."""


class TopologyPublisher:
    """The cloud master's side: snapshots of the registry's workers and the catalog, and change events."""

    def __init__(self, registry: EmbeddedRegistry, catalog: Catalog, *, refresh_s: float = 2.0) -> None:
        self.registry = registry
        self.catalog = catalog
        self.refresh_s = refresh_s
        self.version = 1
        self._workers_key = self._key()
        self._waiters: set[asyncio.Future[None]] = set()
        registry.watch(self._membership_changed)

    def _key(self) -> frozenset[Member]:
        return frozenset(s.member for s in self.registry.members(WORKER_SERVICE))

    def _membership_changed(self) -> None:
        key = self._key()
        if key != self._workers_key:  # edges coming and going change nothing an edge needs
            self._workers_key = key
            self._changed()

    def set_catalog(self, catalog: Catalog) -> None:
        """Publish ``catalog`` (a change only if it differs)."""
        if catalog != self.catalog:
            self.catalog = catalog
            self._changed()

    def _changed(self) -> None:
        self.version += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def snapshot(self) -> TopologySnapshot:
        """The current topology."""
        workers = tuple((s.member, s.load) for s in self.registry.members(WORKER_SERVICE))
        return TopologySnapshot(version=self.version, workers=workers, catalog=self.catalog,
                                refresh_s=self.refresh_s)

    async def updates(self) -> AsyncIterator[TopologySnapshot]:
        """The current snapshot, then one after every change, at least every ``refresh_s``."""
        loop = asyncio.get_running_loop()
        while True:
            yield self.snapshot()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait([waiter], timeout=self.refresh_s)
            finally:
                self._waiters.discard(waiter)


class TopologySource(Protocol):
    """Where an edge master reads the cloud master's topology from (the gRPC control client)."""

    def watch(self, watcher_id: str, region: str) -> AsyncIterator[TopologySnapshot]:
        """The cloud master's snapshots; raises FoglineError when the stream fails."""


class TopologyFollower:
    """An edge master's side: follows the cloud master's topology, keeping the last one it received."""

    def __init__(self, source: TopologySource, apply: Callable[[TopologySnapshot], None], *, watcher_id: str,
                 region: str, silence_refreshes: float = 3.0, max_backoff_s: float = 2.0,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self._apply = apply
        self._watcher_id = watcher_id
        self._region = region
        self._silence_refreshes = silence_refreshes
        self._backoff = Backoff(initial_s=0.05, max_s=max_backoff_s, rng=rng)
        self._clock = clock
        self.last: TopologySnapshot | None = None
        self.connected = False
        self.received_at: float | None = None
        self.last_error: str | None = None
        self.first = asyncio.Event()
        """Set once a topology has been received."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start following in the background."""
        self._task = asyncio.create_task(self._run(), name="topology")

    async def stop(self) -> None:
        """Stop following (the last topology stays)."""
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            self.last_error = await self._follow_until_lost()
            if self.connected:
                self._backoff.reset()
                log.warning("topology from the cloud master lost (%s); keeping the last one (version %s)",
                            self.last_error, self.last.version if self.last else None)
            self.connected = False
            await asyncio.sleep(self._backoff.next_delay())

    async def _follow_until_lost(self) -> str:
        """Follow one stream until it ends or fails; why it was lost."""
        try:
            await self._follow()
        except FoglineError as err:
            return str(err)
        except asyncio.TimeoutError:
            return "the cloud master's topology stream went silent"
        return "the cloud master ended the topology stream"

    async def _follow(self) -> None:
        updates = self.source.watch(self._watcher_id, self._region)
        try:
            silence_s = None if self.last is None else self.last.refresh_s * self._silence_refreshes
            while True:
                snapshot = await asyncio.wait_for(anext(updates), silence_s)
                self._receive(snapshot)
                silence_s = snapshot.refresh_s * self._silence_refreshes
        except StopAsyncIteration:
            return
        finally:
            await updates.aclose()  # type: ignore[attr-defined]

    def _receive(self, snapshot: TopologySnapshot) -> None:
        if not self.connected:
            log.info("following the cloud master's topology (version %d, %d workers)", snapshot.version,
                     len(snapshot.workers))
        self.connected = True
        self.received_at = self._clock()
        self.last = snapshot
        self._apply(snapshot)
        self.first.set()

    def status(self) -> dict[str, Any]:
        """The follower's state for the edge master's ``/v1/status``."""
        last = self.last
        return {"connected": self.connected, "version": last.version if last else None,
                "age_s": None if self.received_at is None else round(self._clock() - self.received_at, 3),
                "last_error": self.last_error,
                "catalog": [describe(e) for e in last.catalog.entries.values()] if last else []}


def worker_states(workers: Iterable[tuple[Member, Load]], previous: dict[str, MemberState],
                  now: float) -> list[MemberState]:
    """Registry-style states for ``workers``, reusing ``previous`` ones so that endpoints pointing at
    them see load updates in place."""
    states = []
    for member, load in workers:
        state = previous.get(member.id)
        if state is None or state.member != member:
            state = MemberState(member, load, now, now)
        else:
            state.load, state.last_seen = load, now
        states.append(state)
    return states
