"""Finding edge masters in Consul for the SDK: once (:func:`find_edges`), or following them as they
come and go (:class:`EdgeFollower`)."""

from __future__ import annotations

from typing import Any

from fogline.adapters.consul.client import (
    ConsulSettings,
    call_consul,
    member_from_health_entry,
    open_client,
    service_name,
)
from fogline.adapters.consul.discovery import ConsulDiscovery
from fogline.core.control.registry import Member


async def find_edges(consul: ConsulSettings, region: str | None = None, *, timeout_s: float = 5.0) -> list[str]:
    """The V2 addresses of the passing edge masters in Consul, those of ``region`` first: the
    endpoints to give :class:`fogline.Client`."""
    client = open_client(consul)
    try:
        _, entries = await call_consul(consul, "find edge masters",
                                       client.health.service(service_name("edge"), passing=True), timeout_s=timeout_s)
    finally:
        await client.close()
    return _by_preference([member_from_health_entry(e) for e in entries or []], region)


def _by_preference(members: list[Member], region: str | None) -> list[str]:
    return [m.address for m in sorted(members, key=lambda m: (m.region != region, m.id))]


class EdgeFollower:
    """Keeps a :class:`fogline.Client`'s endpoints in step with the passing edge masters in Consul,
    those of ``region`` first; while Consul is unreachable the client keeps the last ones.

        client = fogline.Client(await find_edges(settings, region))
        follower = EdgeFollower(ConsulDiscovery(consul=settings), client, region)
        await follower.start()   # ... await follower.stop()
    """

    def __init__(self, discovery: ConsulDiscovery, client: Any, region: str | None = None) -> None:
        self.client = client
        self.region = region
        self.watch = discovery.watch("edge", self._apply)

    def _apply(self, members: list[Member]) -> None:
        self.client.set_endpoints(_by_preference(members, self.region))

    async def start(self) -> None:
        await self.watch.start()

    async def stop(self) -> None:
        await self.watch.stop()
