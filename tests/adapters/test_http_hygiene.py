"""The REST status server over real sockets: connections that never finish a request's headers (slowloris)
are closed within the header timeout, while ordinary and keep-alive clients are served."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fogline.adapters.http import start_http
from fogline.adapters.metrics import Metrics
from fogline.errors import PortInUseError

HEADER_TIMEOUT_S = 0.5
CLOSE_DEADLINE_S = 5.0  # generous: a loaded machine may be late to fire the timer, never early
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


class Source:
    """A status source that is always ready."""

    def readiness(self) -> tuple[bool, str]:
        return True, ""

    def status(self) -> dict[str, Any]:
        return {"tier": "test"}


@pytest.fixture
async def address() -> AsyncIterator[tuple[str, int]]:
    """A status server on 127.0.0.1, port 0, with a short header timeout."""
    runner, port = await start_http(Source(), Metrics("test"), "127.0.0.1", 0, header_timeout_s=HEADER_TIMEOUT_S)
    yield "127.0.0.1", port
    await runner.cleanup()


async def closed_within(reader: asyncio.StreamReader, deadline_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is open after ``deadline_s``."""
    received = b""
    async with asyncio.timeout(deadline_s):
        try:
            while chunk := await reader.read(4096):
                received += chunk
        except ConnectionResetError:
            pass
    return received


async def still_open_for(reader: asyncio.StreamReader, seconds: float) -> None:
    """Wait ``seconds`` for the server to send or close anything; it must do neither."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), seconds)


async def response(reader: asyncio.StreamReader) -> bytes:
    """One /healthz response: its head and its body (Content-Length bytes)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSE_DEADLINE_S)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head + await asyncio.wait_for(reader.readexactly(length), CLOSE_DEADLINE_S)


async def test_a_connection_that_sends_half_a_request_is_closed_after_the_header_timeout(address) -> None:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: te")
    await writer.drain()
    async with aiohttp.ClientSession() as http, http.get(f"http://{address[0]}:{address[1]}/healthz") as r:
        assert r.status == 200  # meanwhile, on another connection
    assert await closed_within(reader, CLOSE_DEADLINE_S) == b""  # closed, with no response
    assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(address) -> None:
    reader, writer = await asyncio.open_connection(*address)
    assert await closed_within(reader, CLOSE_DEADLINE_S) == b""
    writer.close()


async def test_headers_sent_byte_by_byte_past_the_timeout_are_cut_off(address) -> None:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(*address)
    received = None
    async with asyncio.timeout(CLOSE_DEADLINE_S):
        for byte in b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 4000:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                received = await asyncio.wait_for(reader.read(4096), 0.02)  # paces the bytes, sees the close
            except TimeoutError:
                continue
            except ConnectionError:
                received = b""
            break
    assert received == b""  # closed, with no response: not the 400 of a header too long
    assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9
    writer.close()


async def test_a_keep_alive_connection_is_served_past_the_first_request_deadline(address) -> None:
    reader, writer = await asyncio.open_connection(*address)
    for _ in range(3):  # at 0, 0.6 and 1.2 timeouts: the first-request deadline passes between them
        writer.write(REQUEST)
        assert (await response(reader)).startswith(b"HTTP/1.1 200")
        await still_open_for(reader, HEADER_TIMEOUT_S * 0.6)
    assert await closed_within(reader, CLOSE_DEADLINE_S) == b""  # idle after a response: closed
    writer.close()


async def test_half_a_second_request_on_a_keep_alive_connection_is_closed_after_the_timeout(address) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(REQUEST)
    assert (await response(reader)).startswith(b"HTTP/1.1 200")
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    assert await closed_within(reader, CLOSE_DEADLINE_S) == b""
    writer.close()


async def test_a_keep_alive_client_sends_two_requests_on_one_connection(address) -> None:
    opened, reused = [], []
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(lambda *_: _append(opened))
    trace.on_connection_reuseconn.append(lambda *_: _append(reused))
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        for _ in range(2):
            async with http.get(f"http://{address[0]}:{address[1]}/healthz") as r:
                assert r.status == 200 and await r.json() == {"live": True}
    assert (len(opened), len(reused)) == (1, 1)


async def _append(events: list[None]) -> None:
    events.append(None)


async def test_a_taken_port_is_port_in_use_naming_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError) as info:
            await start_http(Source(), Metrics("test"), "127.0.0.1", port, flag="--http-port")
    assert "--http-port" in str(info.value)


async def test_the_server_stops_with_its_runner() -> None:
    runner, port = await start_http(Source(), Metrics("test"), "127.0.0.1", 0)
    await runner.cleanup()
    with pytest.raises(OSError) as info:
        await asyncio.open_connection("127.0.0.1", port)
    assert info.value.errno == errno.ECONNREFUSED
