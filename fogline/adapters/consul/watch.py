"""Blocking-query watches of Consul services and KV that keep the last known state while Consul
cannot be reached."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import consul
import consul.aio

from fogline.adapters.consul.client import (
    REGION_TAG_PREFIX,
    ConsulSettings,
    _duration,
    call_consul,
    member_from_health_entry,
    open_client,
    service_name,
)
from fogline.core.control.backoff import Backoff
from fogline.core.control.registry import Member
from fogline.core.tasks import stop_task
from fogline.errors import FoglineError, InvalidInputError

T = TypeVar("T")

log = logging.getLogger(__name__)


class _BlockingWatch(Generic[T]):
    """A blocking-query loop: ``index`` + jittered ``wait``; capped, jittered backoff on errors, keeping
    the last known value meanwhile; ``on_change`` only when the value changed (and on the first sync)."""

    def __init__(self, settings: ConsulSettings, on_change: Callable[[T], None], *, name: str,
                 wait_s: float = 60.0, min_backoff_s: float = 0.1, max_backoff_s: float = 30.0,
                 request_timeout_s: float = 5.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.settings = settings
        self.name = name
        self.wait_s = wait_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.request_timeout_s = request_timeout_s
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._backoff = Backoff(initial_s=min_backoff_s, max_s=max_backoff_s, rng=self._rng)
        self._clock = clock
        self._sleep = sleep
        self.connected = False
        self.last_error: str | None = None
        self.last_index = 0
        self.last_sync: float | None = None
        self.errors = 0
        self.value: T | None = None
        self.synced = asyncio.Event()
        self._client: consul.aio.Consul | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the Consul client and start the query loop."""
        self._client = open_client(self.settings)
        self._task = asyncio.create_task(self._run(), name=f"consul-watch {self.name}")

    async def stop(self) -> None:
        """Stop the loop and close the client."""
        task, self._task = self._task, None
        await stop_task(task)
        if self._client is not None:
            await self._client.close()
            self._client = None

    def status(self) -> dict[str, Any]:
        """The watch's state for ``/v1/status`` and metrics."""
        age = None if self.last_sync is None else round(self._clock() - self.last_sync, 3)
        return {"watch": self.name, "connected": self.connected, "last_error": self.last_error,
                "last_index": self.last_index, "last_sync_age_s": age, "errors": self.errors}

    async def _query(self, client: consul.aio.Consul, index: int, wait: str) -> tuple[Any, Any]:
        raise NotImplementedError

    def _convert(self, data: Any) -> T:
        raise NotImplementedError

    async def _run(self) -> None:
        assert self._client is not None
        client = self._client
        while True:
            try:
                index, value = await self._poll(client)
            except FoglineError as err:
                self._failed(err)
                await self._sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()
            self._synced(index, value)

    async def _poll(self, client: consul.aio.Consul) -> tuple[int, T]:
        """One blocking query: the index and value once something changed or the wait ran out."""
        wait_s = self.wait_s * (1 - 0.1 * self._rng.random())  # spread the watchers' wake-ups
        index, data = await call_consul(
            self.settings, f"watch {self.name}", self._query(client, self.last_index, _duration(wait_s)),
            timeout_s=wait_s * 17 / 16 + self.request_timeout_s)  # Consul adds up to wait/16
        return int(index), self._convert(data)

    def _failed(self, err: FoglineError) -> None:
        self.errors += 1
        if self.connected or self.last_error is None:
            log.warning("Consul watch %s lost Consul (%s); keeping the last known state", self.name, err)
        else:
            log.debug("Consul watch %s: still no Consul (%s)", self.name, err)
        self.connected = False
        self.last_error = str(err)
        self.last_index = 0  # NOTE: the first query after an outage answers at once with the current state

    def _synced(self, index: int, value: T) -> None:
        if not self.connected and self.last_error is not None:
            log.info("Consul watch %s reconnected", self.name)
        self.connected = True
        self.last_error = None
        self.last_sync = self._clock()
        # Consul: reset an index that went backwards, never block on 0.
        self.last_index = 0 if index < self.last_index else max(index, 1)
        first = not self.synced.is_set()
        self.synced.set()
        if first or value != self.value:
            self.value = value
            try:
                self._on_change(value)
            except Exception:
                log.exception("Consul watch %s: on_change failed", self.name)


class ServiceWatch(_BlockingWatch[list[Member]]):
    """The passing members of one Fogline service (optionally of one region), by blocking queries on
    ``/v1/health/service/fogline-<service>?passing``. ``on_change`` gets them sorted by id."""

    def __init__(self, settings: ConsulSettings, service: str, on_change: Callable[[list[Member]], None], *,
                 region: str | None = None, **options: Any) -> None:
        scope = f"{service}@{region}" if region else service
        super().__init__(settings, on_change, name=scope, **options)
        self.service_name = service_name(service)
        self.region = region

    @property
    def members(self) -> list[Member]:
        """The last known members (empty before the first sync)."""
        return self.value or []

    async def _query(self, client: consul.aio.Consul, index: int, wait: str) -> tuple[Any, Any]:
        tag = REGION_TAG_PREFIX + self.region if self.region else None
        return await client.health.service(self.service_name, index=index or None, wait=wait, passing=True, tag=tag)

    def _convert(self, data: Any) -> list[Member]:
        members = []
        for entry in data or []:
            try:
                members.append(member_from_health_entry(entry))
            except (InvalidInputError, KeyError, TypeError, ValueError) as exc:
                log.warning("Consul watch %s: skipping a malformed instance (%s)", self.name, exc)
        return sorted(members, key=lambda m: m.id)


class KVWatch(_BlockingWatch[dict[str, bytes]]):
    """The keys under a KV ``prefix`` and their values (a missing value is b""), by blocking queries."""

    def __init__(self, settings: ConsulSettings, prefix: str, on_change: Callable[[dict[str, bytes]], None],
                 **options: Any) -> None:
        if prefix.startswith("/"):
            raise InvalidInputError(f"Consul KV prefix {prefix!r} must not start with '/'")
        super().__init__(settings, on_change, name=f"kv:{prefix}", **options)
        self.prefix = prefix

    @property
    def values(self) -> dict[str, bytes]:
        """The last known keys and values (empty before the first sync)."""
        return self.value or {}

    async def _query(self, client: consul.aio.Consul, index: int, wait: str) -> tuple[Any, Any]:
        return await client.kv.get(self.prefix, index=index or None, wait=wait, recurse=True)

    def _convert(self, data: Any) -> dict[str, bytes]:
        return {entry["Key"]: entry.get("Value") or b"" for entry in data or []}
