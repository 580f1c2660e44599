"""The REST status server every process runs.

- ``GET /healthz``: 200 while the process is alive.
- ``GET /readyz``: 200 when it can serve; 503 with the reason otherwise.
- ``GET /v1/status``: JSON — identity, models, load, peers.
- ``GET /metrics``: Prometheus text format.
- ``GET /ui/`` (masters): the live dashboard page (``fogline.adapters.http.ui``), over its JSON routes.

A process may add GET routes of its own that answer JSON (the cloud master's ``/v1/topology``); a route's
path parameters (``/v1/models/{name}``) are its producer's keyword arguments, and a FoglineError it raises
is answered ``{"error", "code"}`` with the code's HTTP status.

A connection has ``header_timeout_s`` to send the complete headers of a request, counted from when it
opens and from the end of each response; one that takes longer is closed (slowloris).

With ``tls`` the server speaks HTTPS only (``fogline.adapters.tls.http``). Status pages hold no secrets:
callers normally pass ``ClientAuth.OPTIONAL`` (a client certificate is asked for, not required).
"""

from __future__ import annotations

import errno
import inspect
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fogline.adapters.metrics import Metrics
from fogline.adapters.tls.http import server_ssl_context
from fogline.adapters.tls.material import ClientAuth, TlsMaterial
from fogline.errors import ErrorCode, FoglineError, PortInUseError

HTTP_STATUS = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.INTERNAL: 500,
    ErrorCode.FAILED_PRECONDITION: 409,
}


DEFAULT_HEADER_TIMEOUT_S = 10.0
"""How long a connection may take to send a request's headers, or sit idle between requests."""

JsonRoute = Callable[..., Awaitable[Any]]
"""Produces the JSON body of an extra GET route, given its path parameters as keyword arguments."""

ServerTls = tuple[TlsMaterial, ClientAuth]
"""The certificate a REST server serves, and whether it asks its clients for theirs."""


class StatusSource(Protocol):
    """What a process tells its REST status server: whether it is ready, and its status document."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not)."""

    def status(self) -> dict[str, Any]: ...


def create_app(source: StatusSource, metrics: Metrics,
               routes: Mapping[str, JsonRoute] | None = None, *, ui: bool = False) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def readyz(request: web.Request) -> web.Response:
        ready, reason = source.readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(source.status())

    async def prometheus(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=64 * 1024)  # status endpoints take no bodies
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/metrics", prometheus)
    for path, produce in (routes or {}).items():
        app.router.add_get(path, _json_route(produce))
    if ui:
        from fogline.adapters.http.ui import add_ui_routes

        add_ui_routes(app)
    return app


def _json_route(produce: JsonRoute) -> Callable[[web.Request], Awaitable[web.Response]]:
    # NOTE: a producer's optional parameters (a default, a string when given) come from the query string.
    query = [name for name, p in inspect.signature(produce).parameters.items() if p.default is not p.empty]

    async def handle(request: web.Request) -> web.Response:
        asked = {n: request.query[n] for n in query if n in request.query and n not in request.match_info}
        try:
            return web.json_response(await produce(**request.match_info, **asked))
        except FoglineError as err:
            return web.json_response({"error": err.message, "code": err.code.value}, status=HTTP_STATUS[err.code])
    return handle


async def start_http(source: StatusSource, metrics: Metrics, host: str, port: int, *,
                     routes: Mapping[str, JsonRoute] | None = None, flag: str = "--http-port",
                     header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                     tls: ServerTls | None = None, ui: bool = False) -> tuple[web.AppRunner, int]:
    """Serve the status app (plus ``routes``) on host:port (0 = any free port); the runner and the bound
    port. A port that is taken raises :class:`PortInUseError` naming ``flag``. A connection that takes
    longer than ``header_timeout_s`` to send a request's headers, or sits idle that long, is closed.
    With ``tls`` (material, client auth) it serves HTTPS, with the material's current certificate. With
    ``ui`` it also serves the dashboard page (``/ui/``)."""
    ssl_context = None if tls is None else server_ssl_context(*tls)
    return await serve_app(create_app(source, metrics, routes, ui=ui), host, port, flag=flag,
                           header_timeout_s=header_timeout_s, ssl_context=ssl_context)


async def serve_app(app: web.Application, host: str, port: int, *, flag: str, header_timeout_s: float,
                    ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on host:port as :func:`start_http` does (header timeout, SO_REUSEADDR,
    :class:`PortInUseError` naming ``flag``), over TLS with ``ssl_context``; the runner and the bound port."""
    # NOTE: aiohttp (>= 3.14) arms its keep-alive timer when a connection opens and after each response,
    # so a connection idle, or half-way through a request's headers, that long is closed (slowloris).
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=header_timeout_s)
    await runner.setup()
    # NOTE: SO_REUSEADDR, as every server has it: a restart binds at once over the TIME-WAIT sockets
    # its last run left, and a second live listener is still refused (no SO_REUSEPORT).
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=False, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        if err.errno in (errno.EADDRINUSE, errno.EACCES):
            raise PortInUseError(host, port, flag) from None
        raise
    return runner, int(runner.addresses[0][1])
