"""The admin REST server: operations that change the fleet, on a port of their own, for admins only.

A request is admitted with either credential:

- ``Authorization: Bearer <token>``, the token being the content of ``--admin-token-file`` (re-read
  when the file changes);
- over HTTPS, a client certificate the fleet CA signed whose identity is an admin's
  (``spiffe://fogline/admin/<id>``).

Without a credential the answer is 401 (``WWW-Authenticate: Bearer``), with a wrong token 401, with a
fleet certificate that is not an admin's 403. A server configured with neither a token file nor TLS
refuses every request (403): the admin API is off until an operator sets up a credential.

Routes answer JSON; errors are ``{"error": message, "code": CODE}`` with the code's HTTP status. Neither
the token nor the ``Authorization`` header is ever logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from fogline.adapters.http.status import DEFAULT_HEADER_TIMEOUT_S, HTTP_STATUS, serve_app
from fogline.adapters.tls.http import peer_identity_of, server_ssl_context
from fogline.adapters.tls.material import ClientAuth, TlsMaterial
from fogline.adapters.tokenfile import AdminGate, AdminWording, TokenFile
from fogline.errors import (
    FoglineError,
    InvalidInputError,
    OverloadedError,
    UnauthenticatedError,
)

log = logging.getLogger(__name__)

AdminRoute = Callable[[web.Request], Awaitable[Any]]
"""Serves one admin request; returns the JSON-able body of the answer (or a ready response), or raises
a FoglineError."""

MAX_BODY_BYTES = 1024 * 1024
DISABLED = "admin API disabled: start with --admin-token-file or TLS"
MISSING = ("missing admin credential: send 'Authorization: Bearer <token>' (the content of the admin token "
           "file) or connect with an admin client certificate")
NO_TOKENS = "this server takes no admin tokens (no --admin-token-file): connect with an admin client certificate"
INTERNAL = "internal error serving an admin request; see the server's log"
WORDING = AdminWording(disabled=DISABLED, missing=MISSING, no_tokens=NO_TOKENS, surface="the admin API")


class AdminAuth:
    """Who may use the admin API: holders of the token in ``token_file``, and (with ``material``, over
    HTTPS) clients whose certificate names an admin. Neither configured: nobody."""

    def __init__(self, token_file: Path | None, material: TlsMaterial | None) -> None:
        self._gate = AdminGate(None if token_file is None else TokenFile(token_file), certificates=material is not None,
                               wording=WORDING)

    @property
    def enabled(self) -> bool:
        """Whether any credential can be admitted."""
        return self._gate.enabled

    def admit(self, request: web.Request) -> str:
        """Who ``request`` comes from (for the log: ``token`` or the certificate's identity); raises
        UnauthenticatedError or PermissionDeniedError otherwise."""
        identity = peer_identity_of(request) if self._gate.certificates else None
        return self._gate.admit(identity, _bearer(request.headers.get("Authorization")))


def _bearer(header: str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without one."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token.encode("utf-8", "surrogateescape")


def error_response(err: FoglineError) -> web.Response:
    """``err`` as an admin answer: its HTTP status, ``{"error", "code"}``, and the headers its kind needs."""
    headers = {}
    if isinstance(err, UnauthenticatedError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(err, OverloadedError) and err.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after_s)))
    return web.json_response({"error": err.message, "code": err.code.value}, status=HTTP_STATUS[err.code],
                             headers=headers)


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; InvalidInputError (400) if it is not JSON."""
    try:
        return json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"the request body is not JSON: {exc}") from None


def _guard(auth: AdminAuth) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware that admits each request (before any route, even an unknown one) and turns
    errors into answers."""

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        try:
            who = auth.admit(request)
            log.info("admin %s %s by %s", request.method, request.path, who)
            return await handler(request)
        except FoglineError as err:
            return error_response(err)
        except web.HTTPException:
            raise  # aiohttp's own answers: 404, 405, 413
        except Exception:
            log.exception("admin %s %s failed", request.method, request.path)
            return web.json_response({"error": INTERNAL, "code": "INTERNAL"}, status=500)

    return guard


def _json_handler(route: AdminRoute) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await route(request)
        return body if isinstance(body, web.StreamResponse) else web.json_response(body)
    return handle


def create_admin_app(routes: Mapping[tuple[str, str], AdminRoute], auth: AdminAuth) -> web.Application:
    """The admin app: ``routes`` by (method, aiohttp path), behind ``auth``, bodies up to 1 MiB."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_guard(auth)])
    for (method, path), route in routes.items():
        app.router.add_route(method, path, _json_handler(route))
    return app


async def start_admin(routes: Mapping[tuple[str, str], AdminRoute], *, host: str, port: int, auth: AdminAuth,
                      tls: TlsMaterial | None, flag: str = "--admin-port",
                      header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> tuple[web.AppRunner, int]:
    """Serve ``routes`` on host:port (0 = any free port), HTTPS asking for client certificates when
    ``tls`` is given; the runner and the bound port. A taken port is :class:`PortInUseError` naming ``flag``."""
    if not auth.enabled:
        log.warning("admin API on %s:%s refuses every request: %s", host, port, DISABLED)
    ssl_context = None if tls is None else server_ssl_context(tls, ClientAuth.OPTIONAL)
    return await serve_app(create_admin_app(routes, auth), host, port, flag=flag,
                           header_timeout_s=header_timeout_s, ssl_context=ssl_context)

