"""fetch_statuses against real aiohttp servers: bounded bodies, JSON only, HTTPS verifying each member."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from fogline.adapters.http import start_http
from fogline.adapters.http.peers import fetch_statuses
from fogline.adapters.metrics import Metrics
from fogline.adapters.tls.http import client_ssl_context
from fogline.adapters.tls.material import ClientAuth
from tests.adapters.test_http_tls import CLIENT, SERVER, Source, TinyCA


async def endless(request: web.Request) -> web.StreamResponse:
    reply = web.StreamResponse(headers={"Content-Type": "application/json"})
    await reply.prepare(request)
    await reply.write(b'{"devices": [')
    while True:
        await reply.write(b'"x",' * 8192)


def answering(reply: Callable[[], web.StreamResponse]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler answering ``reply()``."""
    async def handle(request: web.Request) -> web.StreamResponse:
        return reply()
    return handle


async def routes(app_routes: dict) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in app_routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}"


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, str]]:
    made = {}
    runners = []
    for name, handler in {
        "good": answering(lambda: web.json_response({"ready": True, "devices": []})),
        "endless": endless,
        "huge": answering(lambda: web.Response(body=b" " * (2 * 1024 * 1024) + b"{}", content_type="application/json")),
        "text": answering(lambda: web.Response(text='{"ready": true}', content_type="text/plain")),
        "deep": answering(lambda: web.Response(body=b"[" * 200_000 + b"]" * 200_000, content_type="application/json")),
        "list": answering(lambda: web.json_response([1, 2])),
    }.items():
        runner, address = await routes({"/v1/status": handler})
        runners.append(runner)
        made[name] = address
    yield made
    for runner in runners:
        await runner.cleanup()


async def test_bounded_bodies_and_json_objects_only(servers: dict[str, str]) -> None:
    addresses = [*servers.values(), servers["good"]]
    got = await asyncio.wait_for(fetch_statuses(addresses, 5.0), 10)
    assert got[servers["good"]] == {"ready": True, "devices": []}
    for name in ("endless", "huge", "text", "deep", "list"):
        assert got[servers[name]] is None, name


async def test_https_verifies_each_members_name(tmp_path: Path) -> None:
    ca = TinyCA()
    runner, port = await start_http(Source(), Metrics("test"), "127.0.0.1", 0,
                                    tls=(ca.material(tmp_path / "s", SERVER), ClientAuth.OPTIONAL))
    try:
        context = client_ssl_context(ca.material(tmp_path / "c", CLIENT))
        address = f"127.0.0.1:{port}"
        ok = await fetch_statuses([address], 5.0, ssl=context, server_names={address: SERVER.dns_name})
        assert ok[address] is not None and ok[address]["tier"] == "test"
        wrong = await fetch_statuses([address], 5.0, ssl=context, server_names={address: "evil.edge.fogline"})
        assert wrong[address] is None
        plain = await fetch_statuses([address], 5.0)
        assert plain[address] is None
    finally:
        await runner.cleanup()
