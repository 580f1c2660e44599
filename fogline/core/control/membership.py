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

from fogline.core.control.registry import Load, Member
from fogline.core.tasks import stop_task
from fogline.errors import FoglineError

log = logging.getLogger(__name__)


class ControlPlane(Protocol):
    async def register(self, member: Member) -> tuple[float, float]:
        """Join; returns (heartbeat interval, ttl) in seconds."""

    async def heartbeat(self, member_id: str, load: Load, models: list[str]) -> bool: ...

    async def deregister(self, member_id: str) -> None: ...


class MembershipLoop:
    def __init__(self, control: ControlPlane, member: Callable[[], Member], load: Callable[[], Load], *,
                 max_backoff_s: float = 2.0, rng: random.Random | None = None) -> None:
        self.control = control
        self._member = member
        self._load = load
        self._max_backoff_s = max_backoff_s
        self._rng = rng or random.Random()
        self.registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._registering = False  # a Register call is in flight: the master may know us already
        self.interval_s = 1.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="membership")

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                if not self.registered.is_set():
                    self._registering = True
                    try:
                        self.interval_s, _ = await self.control.register(self._member())
                    finally:
                        self._registering = False
                    self.registered.set()
                    log.info("registered with master %s", getattr(self.control, "address", ""))
                member = self._member()
                known = await self.control.heartbeat(member.id, self._load(), sorted(member.models))
                if not known:
                    log.warning("master forgot this member; registering again")
                    self.registered.clear()
                    continue
                backoff = 0.05
                await asyncio.sleep(self.interval_s)
            except FoglineError as err:
                self.registered.clear()
                log.warning("master unreachable (%s); retrying in %.2fs", err, backoff)
                await asyncio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, self._max_backoff_s)

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
