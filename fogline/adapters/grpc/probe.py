"""Health checks of members that registered an address nobody has reached yet.

A master whose registry requires checks (``EmbeddedRegistry(require_check=True)``) routes to a new
member, or to one that moved, only once :class:`HealthProber` has called ``grpc.health.v1.Health/Check``
at its address and heard SERVING: ten members registered at a dead port never enter routing, so
they can never push the pool into panic routing. The owner's ``open_channel`` decides how the
prober connects (with mTLS, checking that the server there is that member's certificate).

One probe runs per unchecked member at most; it retries with capped, jittered backoff while the
member is registered and unchecked, follows it to a new address, and ends when the member passes,
leaves or expires. Each attempt opens a fresh channel and closes it: grpc's own reconnect backoff
(up to two minutes) must not delay a member that comes up late.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fogline.core.control.backoff import Backoff
from fogline.core.control.registry import EmbeddedRegistry, Member
from fogline.core.tasks import stop_task
from fogline.errors import truncate

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_DETAILS_MAX_CHARS = 200  # what a member's server says goes into our log: bounded


class HealthProber:
    """Marks a registry's unchecked members checked once their address answers SERVING.

    ``open_channel(member)`` gives a channel to ``member.address``; the prober closes each one.
    ``timeout_s`` bounds one Check; between failed ones it waits ``initial_backoff_s``, growing to
    ``max_backoff_s`` (jittered). A member still failing after ``warn_after_failures`` tries is logged
    once at WARNING; each try is logged at DEBUG only.
    """

    def __init__(self, registry: EmbeddedRegistry, open_channel: Callable[[Member], grpc.aio.Channel], *,
                 timeout_s: float = 1.0, initial_backoff_s: float = 0.1, max_backoff_s: float = 5.0,
                 warn_after_failures: int = 3, rng: random.Random | None = None) -> None:
        self.registry = registry
        self.timeout_s = timeout_s
        self._open_channel = open_channel
        self._backoff = (initial_backoff_s, max_backoff_s)
        self._warn_after_failures = warn_after_failures
        self._rng = rng or random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        registry.watch(self._sync)  # NOTE: a registry keeps its watchers: a stopped prober ignores the calls

    def start(self) -> None:
        """Probe the members unchecked now and every one that joins unchecked from now on (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._sync()

    async def stop(self) -> None:
        """Stop every probe (their channels are closed) and ignore the registry from now on."""
        self._loop = None
        await asyncio.gather(*(stop_task(task) for task in list(self._tasks.values())))

    @property
    def probing(self) -> frozenset[str]:
        """The ids of the members being probed now."""
        return frozenset(self._tasks)

    def _sync(self) -> None:
        """Start a probe for each unchecked member without one; cancel those of members that left."""
        if self._loop is None:
            return
        for state in self.registry.unchecked():
            if state.member.id not in self._tasks:
                self._start_probe(self._loop, state.member.id)
        for member_id, task in self._tasks.items():
            if self.registry.get(member_id) is None:
                task.cancel()

    def _start_probe(self, loop: asyncio.AbstractEventLoop, member_id: str) -> None:
        task = loop.create_task(self._probe(member_id), name=f"health probe {member_id}")
        self._tasks[member_id] = task
        task.add_done_callback(lambda done: self._ended(member_id, done))

    def _ended(self, member_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(member_id) is task:
            del self._tasks[member_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("health probe of %s failed", member_id, exc_info=task.exception())
            return
        self._sync()  # a member that left and came back while its old probe was ending

    def _pending(self, member_id: str) -> Member | None:
        """The member while it is registered and unchecked; None once it passed or left."""
        state = self.registry.get(member_id)
        return state.member if state is not None and not state.checked else None

    async def _probe(self, member_id: str) -> None:
        backoff = Backoff(initial_s=self._backoff[0], max_s=self._backoff[1], rng=self._rng)
        failures = 0
        while (member := self._pending(member_id)) is not None:
            problem = await self._check(member)
            if problem is None:
                if self.registry.mark_checked(member_id, member.address):
                    log.info("%s %s at %s passed its health check; routing to it", member.service, member_id,
                             member.address)
                continue  # passed, or moved meanwhile: the loop probes its new address
            failures += 1
            log.debug("health check of %s at %s failed (%s)", member_id, member.address, problem)
            if failures == self._warn_after_failures:
                log.warning("%s %s at %s fails its health check (%s, %d tries); it is not routed to until it "
                            "answers SERVING", member.service, member_id, member.address, problem, failures)
            await asyncio.sleep(backoff.next_delay())

    async def _check(self, member: Member) -> str | None:
        """One ``Health/Check`` of ``member``'s address: None if it answered SERVING, else why not."""
        try:
            channel = self._open_channel(member)
        except Exception as exc:  # NOTE: the owner's factory (TLS material, address): one failed try, not a dead prober
            return f"no channel: {truncate(str(exc), _DETAILS_MAX_CHARS)}"
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                     timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {truncate(exc.details() or '', _DETAILS_MAX_CHARS)}"
        finally:
            await channel.close()
        return None if reply.status == _SERVING else _status_name(reply.status)


def _status_name(status: int) -> str:
    """The name of a health status; a number no version of the protocol defines is shown as such."""
    try:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    except ValueError:
        return f"status {status}"
