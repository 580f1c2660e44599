"""Reading the REST status of peers (the cloud master asks its edge masters for their devices).

A status is read from the address a member registered, so whatever answers there is a stranger
until proven otherwise: the body is read up to ``max_body_bytes`` (an endless body costs nothing
more), and with ``ssl`` the read is HTTPS, verifying that the server is the member named in
``server_names``. What the caller keeps of a status it still checks (``fogline.core.control.peer_status``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from ssl import SSLContext
from typing import Any

import aiohttp

from fogline.errors import truncate

log = logging.getLogger(__name__)

STATUS_MAX_BYTES = 1024 * 1024
"""The largest status body read from a peer."""
_ERROR_MAX_CHARS = 200  # a peer's words in our log: bounded


class _BadStatus(ValueError):
    """A reply that is not a status: too large or not JSON."""


async def fetch_statuses(addresses: Sequence[str], timeout_s: float = 1.0, *, ssl: SSLContext | None = None,
                         server_names: Mapping[str, str] | None = None,
                         max_body_bytes: int = STATUS_MAX_BYTES) -> dict[str, dict[str, Any] | None]:
    """``GET http://<address>/v1/status`` of each address concurrently; None for one that did not
    answer with a JSON object of at most ``max_body_bytes`` within ``timeout_s`` (a slow or dead peer
    never holds up the others), with a WARNING saying why.

    With ``ssl`` the reads are HTTPS with that context; ``server_names`` maps an address to the
    name its server's certificate must carry (the member's identity), instead of the address's host.
    """
    names = server_names or {}
    unique = list(dict.fromkeys(addresses))
    reader = PeerReader(timeout_s=timeout_s, ssl=ssl, max_body_bytes=max_body_bytes, warn=True)
    try:
        replies = await asyncio.gather(*(reader.json(a, "/v1/status", names.get(a)) for a in unique))
    finally:
        await reader.close()
    by_address = {a: body if isinstance(body, dict) else None for a, body in zip(unique, replies, strict=True)}
    return {a: by_address[a] for a in addresses}


async def _read(reply: aiohttp.ClientResponse, max_body_bytes: int) -> bytes:
    """The body, or _BadStatus as soon as it is longer than ``max_body_bytes``."""
    if reply.content_length is not None and reply.content_length > max_body_bytes:
        raise _BadStatus(f"a status body of {reply.content_length} bytes; at most {max_body_bytes} are read")
    body = bytearray()
    while chunk := await reply.content.read(max_body_bytes + 1 - len(body)):
        body += chunk
        if len(body) > max_body_bytes:
            raise _BadStatus(f"a status body over {max_body_bytes} bytes")
    return bytes(body)


def _json(content_type: str, body: bytes) -> Any:
    """The decoded body; _BadStatus unless it is JSON (RecursionError for one nested too deep)."""
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise _BadStatus(f"a status of content type {content_type[:80]!r}, not application/json")
    return json.loads(body)


class PeerReader:
    """Reads pages of peers' REST servers (their ``/metrics``, a region's dashboard data) over one
    session kept open between reads, each bounded by ``max_body_bytes`` and ``timeout_s``. A peer that
    does not answer gives None, and nothing is logged: the caller says once that it went away.

    With ``ssl`` the reads are HTTPS, verifying the name ``server_name`` given per read. With ``warn``
    each failed read is logged (a WARNING with the peer's address and why).
    """

    def __init__(self, *, timeout_s: float = 1.0, ssl: SSLContext | None = None,
                 max_body_bytes: int = STATUS_MAX_BYTES, warn: bool = False) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl = ssl
        self._max_body_bytes = max_body_bytes
        self._warn = warn
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _get(self, address: str, path: str, server_name: str | None) -> tuple[str, bytes] | None:
        scheme = "http" if self._ssl is None else "https"
        tls: dict[str, Any] = {} if self._ssl is None else {"ssl": self._ssl, "server_hostname": server_name}
        try:
            async with self._open().get(f"{scheme}://{address}{path}", **tls) as reply:
                reply.raise_for_status()
                return reply.content_type, await _read(reply, self._max_body_bytes)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as exc:
            self._failed(address, path, exc)
            return None

    def _failed(self, address: str, path: str, exc: BaseException) -> None:
        if self._warn:
            log.warning("%s of %s unavailable: %s", path, address,
                        truncate(str(exc), _ERROR_MAX_CHARS) or type(exc).__name__)

    async def text(self, address: str, path: str, server_name: str | None = None) -> str | None:
        """The page's body as text (None: no answer, or not UTF-8)."""
        got = await self._get(address, path, server_name)
        if got is None:
            return None
        try:
            return got[1].decode()
        except UnicodeDecodeError:
            return None

    async def json(self, address: str, path: str, server_name: str | None = None) -> Any:
        """The page's JSON body (None: no answer, or not JSON)."""
        got = await self._get(address, path, server_name)
        if got is None:
            return None
        try:
            return _json(*got)
        except (ValueError, RecursionError) as exc:
            self._failed(address, path, exc)
            return None

    async def close(self) -> None:
        """Close the session (reads after this open a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
