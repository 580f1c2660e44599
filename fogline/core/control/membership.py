"""A child's membership in its parent master: register, heartbeat load, re-register, leave.

The loop survives its parent: while the parent is unreachable it keeps trying with capped,
jittered backoff, and it registers again when the parent has forgotten it (restart, expiry).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Protocol

from fogline.core.control.backoff import Backoff
from fogline.core.control.registry import Load, Member
from fogline.core.tasks import stop_task
from fogline.errors import FoglineError

log = logging.getLogger(__name__)


class ControlPlane(Protocol):
    """Where a child registers: its parent master's control service, or Consul."""

    async def register(self, member: Member) -> tuple[float, float]:
        """Join; returns (heartbeat interval, ttl) in seconds."""

    async def heartbeat(self, member_id: str, load: Load, models: list[str]) -> bool:
        """Report load and models; False if the parent no longer knows the member (register again)."""

    async def deregister(self, member_id: str) -> None:
        """Leave; the parent stops routing to the member."""

    async def close(self) -> None:
        """Release the connection to the parent; nothing is called after it."""


class MembershipLoop:
    """Keeps one member registered with its parent: registers, heartbeats every interval the parent
    asked for, registers again when forgotten, backs off while the parent is unreachable.

    ``member`` and ``load`` are read afresh for every call, so heartbeats carry the current models
    and load. :meth:`leave` deregisters; :meth:`close` then releases the control plane.
    """

    def __init__(self, control: ControlPlane, member: Callable[[], Member], load: Callable[[], Load], *,
                 max_backoff_s: float = 2.0, rng: random.Random | None = None) -> None:
        self.control = control
        self._member = member
        self._load = load
        self._backoff = Backoff(initial_s=0.05, max_s=max_backoff_s, rng=rng)
        self.registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._registering = False  # a Register call is in flight: the master may know us already
        self.interval_s = 1.0

    def start(self) -> None:
        """Start registering and heartbeating in the background."""
        self._task = asyncio.create_task(self._run(), name="membership")

    async def _run(self) -> None:
        while True:
            try:
                await self._beat()
            except FoglineError as err:
                self.registered.clear()
                delay_s = self._backoff.next_delay()
                log.warning("master unreachable (%s); retrying in %.2fs", err, delay_s)
                await asyncio.sleep(delay_s)

    async def _beat(self) -> None:
        """Register if not registered, then one heartbeat and the wait until the next."""
        if not self.registered.is_set():
            await self._register()
        member = self._member()
        if not await self.control.heartbeat(member.id, self._load(), sorted(member.models)):
            log.warning("master forgot this member; registering again")
            self.registered.clear()
            return
        self._backoff.reset()
        await asyncio.sleep(self.interval_s)

    async def _register(self) -> None:
        self._registering = True
        try:
            self.interval_s, _ = await self.control.register(self._member())
        finally:
            self._registering = False
        self.registered.set()
        log.info("registered with master %s", getattr(self.control, "address", ""))

    async def leave(self) -> None:
        """Stop heartbeating and deregister (best effort: the TTL covers a failure)."""
        registering = self._registering  # cancelled mid-Register: the master may have added us
        await stop_task(self._task)
        if self.registered.is_set() or registering:
            try:
                await self.control.deregister(self._member().id)
            except FoglineError as err:
                log.warning("deregistration failed (%s); the master will expire this member", err)
            self.registered.clear()

    async def close(self) -> None:
        """Release the control plane (after :meth:`leave`, once nothing else uses it)."""
        await self.control.close()
