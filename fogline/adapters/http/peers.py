"""Reading the REST status of peers (the cloud master asks its edge masters for their devices)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


async def fetch_statuses(addresses: Sequence[str], timeout_s: float = 1.0) -> dict[str, dict[str, Any] | None]:
    """``GET http://<address>/v1/status`` of each address concurrently; None for one that did not
    answer with JSON within ``timeout_s`` (a slow or dead peer never holds up the others)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        replies = await asyncio.gather(*(_status(session, a) for a in addresses))
    return dict(zip(addresses, replies, strict=True))


async def _status(session: aiohttp.ClientSession, address: str) -> dict[str, Any] | None:
    try:
        async with session.get(f"http://{address}/v1/status") as reply:
            reply.raise_for_status()
            body = await reply.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("status of %s unavailable: %s", address, exc or type(exc).__name__)
        return None
    return body if isinstance(body, dict) else None
