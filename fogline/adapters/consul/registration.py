"""Registering a member with the local Consul agent, with a gRPC health check of its own."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import consul
import consul.aio

from fogline.adapters.consul.client import ConsulSettings, _duration, call_consul, member_to_service, open_client
from fogline.core.control.registry import Load, Member
from fogline.core.security.identity import REGIONAL, Identity

T = TypeVar("T")

log = logging.getLogger(__name__)


class ConsulControlPlane:
    """Registers a member with the local Consul agent (implements ``fogline.core.control.membership.ControlPlane``).

    Consul, not we, judges the member's health: the agent calls its ``grpc.health.v1`` every
    ``check_interval_s`` and deregisters it once critical for ``deregister_critical_after_s``.
    The heartbeat only confirms the agent still knows the member (an agent restarted with no state
    does not) and re-registers when its model list changed. Load is not reported to Consul.
    """

    def __init__(self, settings: ConsulSettings, *, check_interval_s: float = 2.0, check_timeout_s: float = 1.0,
                 deregister_critical_after_s: float = 60.0, heartbeat_interval_s: float = 5.0,
                 health_service: str = "", request_timeout_s: float = 5.0, grpc_use_tls: bool = False) -> None:
        self.settings = settings
        self.grpc_use_tls = grpc_use_tls
        self.address = settings.url
        self.check_interval_s = check_interval_s
        self.check_timeout_s = check_timeout_s
        self.deregister_critical_after_s = deregister_critical_after_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.health_service = health_service
        self.request_timeout_s = request_timeout_s
        self._client: consul.aio.Consul | None = None
        self._registered: dict[str, Member] = {}

    def _consul(self) -> consul.aio.Consul:
        if self._client is None:
            self._client = open_client(self.settings)
        return self._client

    async def _call(self, action: str, request: Callable[[consul.aio.Consul], Awaitable[T]]) -> T:
        return await call_consul(self.settings, action, request(self._consul()), timeout_s=self.request_timeout_s)

    def health_check(self, member: Member) -> dict[str, Any]:
        """The gRPC check the agent runs against ``member`` (py-consul's ``Check.grpc``)."""
        target = f"{member.address}/{self.health_service}" if self.health_service else member.address
        check = consul.Check.grpc(target, _duration(self.check_interval_s), timeout=_duration(self.check_timeout_s),
                                  deregister=_duration(self.deregister_critical_after_s),
                                  use_tls=True if self.grpc_use_tls else None)
        if self.grpc_use_tls:
            # NOTE: the agent checks the member's certificate for the member's own name (its address may be an
            # IP its certificate does not carry); the agent needs the fleet CA, and a fleet certificate where
            # the member requires client certificates (docs/security.md).
            regional = member.service in REGIONAL
            name = Identity(service=member.service, id=member.id, region=member.region if regional else "").dns_name
            check["TLSServerName"] = name
        return check

    async def register(self, member: Member) -> tuple[float, float]:
        """Register (or update) ``member``; returns (heartbeat interval, deregister-critical-after) in s."""
        service = member_to_service(member)
        await self._call(f"register {member.id}", lambda c: c.agent.service.register(
            **service, check=self.health_check(member), replace_existing_checks=True))
        self._registered[member.id] = member
        log.info("registered %s %s at %s with Consul %s", member.service, member.id, member.address, self.address)
        return self.heartbeat_interval_s, self.deregister_critical_after_s

    async def heartbeat(self, member_id: str, load: Load, models: list[str]) -> bool:
        """False if the agent no longer has the member (it must register again)."""
        services = await self._call(f"look up {member_id}", lambda c: c.agent.services())
        if member_id not in (services or {}):
            return False
        member = self._registered.get(member_id)
        if member is not None and frozenset(models) != member.models:
            await self.register(replace(member, models=frozenset(models)))
        return True

    async def deregister(self, member_id: str) -> None:
        """Remove ``member_id`` from the agent (and with it its check)."""
        self._registered.pop(member_id, None)
        await self._call(f"deregister {member_id}", lambda c: c.agent.service.deregister(member_id))

    async def close(self) -> None:
        """Close the connection to the agent (a later call opens a new one)."""
        if self._client is not None:
            await self._client.close()
            self._client = None
