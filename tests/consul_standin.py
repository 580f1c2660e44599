"""A stand-in for one Consul agent's HTTP API: a test fixture, never imported by ``fogline``.

One node in one datacenter, implementing the subset of the API Fogline uses, with Consul's documented
semantics (https://developer.hashicorp.com/consul/api-docs):

- ``PUT /v1/agent/service/register`` (Check/Checks of type GRPC or TTL, Meta validation,
  ``replace-existing-checks``), ``PUT /v1/agent/service/deregister/<id>``, ``GET /v1/agent/services``,
  ``GET /v1/agent/service/<id>``, ``GET /v1/agent/checks``, ``PUT /v1/agent/check/{pass,warn,fail}/<id>``;
- ``GET /v1/health/service/<name>`` with ``passing`` and ``tag``;
- ``GET/PUT/DELETE /v1/kv/<key>`` with ``recurse``, ``keys``, ``raw``, ``cas``, ``flags``;
- ``GET /v1/status/leader``.

Blocking queries (health and KV): ``index`` + ``wait`` (Go duration, default 5m, at most 10m, plus up
to wait/16 of jitter); an index older than the resource's answers at once, else the request waits for
a change or the wait; ``X-Consul-Index`` (never 0), ``X-Consul-KnownLeader``, ``X-Consul-LastContact``.
The health index is per service name (the services table's index once no instance is left); the KV
index is the key's ModifyIndex, or the prefix's highest Modify/tombstone index, else the table's.

Checks start critical (or at their ``Status``) and keep their status across a re-registration; gRPC
checks really call ``grpc.health.v1.Health/Check`` every interval after a random stagger (SERVING:
passing; anything else, an error or the timeout: critical); TTL checks turn critical when their TTL
runs out. A reaper deregisters services whose check has been critical longer than
``DeregisterCriticalServiceAfter``. Only a status change moves the index (as in Consul, where output
alone is synced later).

Knowingly different from Consul: Consul clamps check intervals to at least 1s, deregister-after to
at least 1m and reaps every 30s; here those are ``min_check_interval_s``, ``min_deregister_after_s`` and
``reap_interval_s`` (Consul's values by default; tests lower them). No ``filter`` expressions,
``node-meta``, sessions, hash-based blocking or consistency modes (400 rather than a wrong answer);
HTTP/TCP/script checks are refused. ACLs are one management token (``acl_token``): any other token is
"ACL not found" (403); no token is the anonymous token, which may write nothing, and whose reads are
filtered (``X-Consul-Results-Filtered-By-ACLs``) or denied, as with ``default_policy = "deny"``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0
MAX_KV_VALUE_BYTES = 512 * 1024
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_META_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ANON = "Permission denied: anonymous token lacks permission '{perm}' on \"{resource}\". The anonymous token " \
        "is used implicitly when a request does not specify a token."


def parse_duration(value: Any) -> float:
    """Seconds of a Go duration ("1m30s", "100ms", "0") or a JSON number of nanoseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value / 1e9
    text = str(value).strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    parts = _DURATION_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"time: invalid duration {text!r}")
    return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)


def _fields(obj: Any) -> dict[str, Any]:
    """A JSON object's fields by case- and underscore-insensitive name, as Consul decodes them."""
    if not isinstance(obj, dict):
        raise web.HTTPBadRequest(text="Request decode failed: expected a JSON object")
    return {k.lower().replace("_", ""): v for k, v in obj.items()}


@dataclass(eq=False)
class _Check:
    id: str
    name: str
    service_id: str
    service_name: str
    kind: str  # "grpc" or "ttl"
    status: str
    notes: str = ""
    output: str = ""
    interval_s: float = 0.0
    timeout_s: float = 10.0
    ttl_s: float = 0.0
    grpc: str = ""
    grpc_use_tls: bool = False
    tls_server_name: str = ""
    deregister_after_s: float | None = None
    create_index: int = 0
    modify_index: int = 0
    critical_since: float | None = None
    ttl_deadline: float = math.inf
    ttl_reset: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Service:
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    create_index: int = 0
    modify_index: int = 0

    def definition(self) -> tuple[Any, ...]:
        return self.name, self.tags, self.address, self.port, self.meta


@dataclass(eq=False)
class _Entry:
    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int


class ConsulStandIn:
    """One fake Consul agent (and server) on 127.0.0.1; ``start``/``stop`` keep its state, ``reset``
    loses it as a restarted ``-dev`` agent does (indexes start over)."""

    def __init__(self, *, acl_token: str | None = None, datacenter: str = "dc1", node: str = "standin",
                 min_check_interval_s: float = 1.0, min_deregister_after_s: float = 60.0,
                 reap_interval_s: float = 30.0, rng: random.Random | None = None,
                 agent_tls: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.acl_token = acl_token
        self.agent_tls = agent_tls
        """(CA, certificate, key) PEM the agent's TLS checks use, as a real agent's ``tls.defaults`` with
        ``enable_agent_tls_for_checks``; None: the system CAs and no client certificate."""
        self.datacenter = datacenter
        self.node = node
        self.min_check_interval_s = min_check_interval_s
        self.min_deregister_after_s = min_deregister_after_s
        self.reap_interval_s = reap_interval_s
        self.port = 0
        self._rng = rng or random.Random()
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self.reset()

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def reset(self) -> None:
        """Forget every service, check and key, as a ``consul agent -dev`` that restarted."""
        for check in getattr(self, "_checks", {}).values():
            self._stop_check(check)
        self._index = 12  # a fresh -dev agent's raft index is small but never 0
        self._services: dict[str, _Service] = {}
        self._checks: dict[str, _Check] = {}
        self._name_index: dict[str, int] = {}
        self._services_index = self._index
        self._kv: dict[str, _Entry] = {}
        self._tombstones: dict[str, int] = {}
        self._kvs_index = 0
        self._notify()

    async def start(self, port: int | None = None) -> None:
        """Listen on ``port`` (default: the port of the last start, else any free port)."""
        app = web.Application(middlewares=[self._track], client_max_size=MAX_KV_VALUE_BYTES + 1024)
        app.add_routes([
            web.put("/v1/agent/service/register", self._register),
            web.put("/v1/agent/service/deregister/{id}", self._deregister),
            web.get("/v1/agent/services", self._agent_services),
            web.get("/v1/agent/service/{id}", self._agent_service),
            web.get("/v1/agent/checks", self._agent_checks),
            web.put("/v1/agent/check/{verb:pass|warn|fail}/{id}", self._ttl_update),
            web.get("/v1/health/service/{name}", self._health_service),
            web.get("/v1/kv/{key:.*}", self._kv_get),
            web.put("/v1/kv/{key:.*}", self._kv_put),
            web.delete("/v1/kv/{key:.*}", self._kv_delete),
            web.get("/v1/status/leader", self._leader),
        ])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port if port is None else port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        for check in self._checks.values():
            self._start_check(check)
        self._reaper = asyncio.create_task(self._reap(), name="consul-standin reaper")

    async def stop(self) -> None:
        """Go away as a killed agent does: open requests are dropped, checks stop; the state is kept."""
        tasks = [t for t in (self._reaper, *(c.task for c in self._checks.values())) if t is not None]
        for check in self._checks.values():
            check.task = None
        self._reaper = None
        for task in self._handlers:
            task.cancel()
        while pending := [t for t in tasks if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, *, fresh: bool = False) -> None:
        """Stop and start on the same port; ``fresh``: with no state, as a restarted ``-dev`` agent."""
        await self.stop()
        if fresh:
            self.reset()
        await self.start()

    @web.middleware
    async def _track(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["X-Consul-Default-ACL-Policy"] = "deny" if self.acl_token else "allow"
            raise
        finally:
            self._handlers.discard(task)
        response.headers["X-Consul-Default-ACL-Policy"] = "deny" if self.acl_token else "allow"
        return response

    # --- state for tests -----------------------------------------------------------------------------------

    def service_ids(self) -> set[str]:
        return set(self._services)

    @property
    def requests_in_flight(self) -> int:
        """Requests being answered now (a blocked query counts until it returns)."""
        return len(self._handlers)

    # --- indexes, blocking, ACL ------------------------------------------------------------------------------

    def _bump(self) -> int:
        self._index += 1
        return self._index

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _blocking(self, request: web.Request,
                        query: Callable[[], tuple[int, Any]]) -> tuple[int, Any, dict[str, str]]:
        """Answer ``query`` (index, result) once its index passes ``?index=``, or at the end of ``?wait=``."""
        self._check_dc(request)
        try:
            min_index = int(request.query.get("index", "0") or 0)
        except ValueError:
            raise web.HTTPBadRequest(text="Invalid index") from None
        try:
            wait_s = parse_duration(request.query["wait"]) if "wait" in request.query else DEFAULT_WAIT_S
        except ValueError:
            raise web.HTTPBadRequest(text="Invalid wait time") from None
        if min_index > 0:
            wait_s = min(wait_s if wait_s > 0 else DEFAULT_WAIT_S, MAX_WAIT_S)
            wait_s += self._rng.uniform(0, wait_s / 16)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while query()[0] <= min_index and (remaining := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):  # NOTE: not wait_for, which can eat a cancellation
                        await self._changed.wait()
        index, result = query()
        index = max(index, 1)
        headers = {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0",
                   "X-Consul-Effective-Consistency": "leader"}
        return index, result, headers

    def _check_dc(self, request: web.Request) -> None:
        dc = request.query.get("dc")
        if dc and dc != self.datacenter:
            raise web.HTTPInternalServerError(text="No path to datacenter")
        for unsupported in ("filter", "node-meta", "hash", "consistent", "stale", "cached"):
            if unsupported in request.query:
                raise web.HTTPBadRequest(text=f"the Consul stand-in does not implement ?{unsupported}")

    def _anonymous(self, request: web.Request) -> bool:
        """Whether the request runs as the anonymous token; 403 "ACL not found" for an unknown token."""
        if self.acl_token is None:
            return False
        token = request.headers.get("X-Consul-Token") or request.query.get("token")
        auth = request.headers.get("Authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        if not token:
            return True
        if token != self.acl_token:
            raise web.HTTPForbidden(text="ACL not found")
        return False

    def _require(self, request: web.Request, perm: str, resource: str) -> None:
        if self._anonymous(request):
            raise web.HTTPForbidden(text=_ANON.format(perm=perm, resource=resource))

    # --- agent: services and checks ------------------------------------------------------------------------------

    async def _register(self, request: web.Request) -> web.Response:
        try:
            body = _fields(await request.json())
        except json.JSONDecodeError as exc:
            raise web.HTTPBadRequest(text=f"Request decode failed: {exc}") from None
        name = body.get("name") or ""
        if not name:
            raise web.HTTPBadRequest(text="Missing service name")
        self._require(request, "service:write", name)
        service = _Service(id=body.get("id") or name, name=name, tags=list(body.get("tags") or []),
                           address=body.get("address") or "", port=int(body.get("port") or 0),
                           meta=dict(body.get("meta") or {}))
        self._validate_meta(service.meta)
        definitions = ([body["check"]] if body.get("check") else []) + list(body.get("checks") or [])
        checks = [self._parse_check(d, service, i, len(definitions)) for i, d in enumerate(definitions, 1)]
        replace = request.query.get("replace-existing-checks", "false").lower() in ("", "1", "true")
        self._apply_registration(service, checks, replace)
        return web.Response()

    def _validate_meta(self, meta: dict[str, Any]) -> None:
        problem = None
        if len(meta) > 64:
            problem = "Node metadata cannot contain more than 64 key/value pairs"
        for key, value in meta.items():
            if not _META_KEY.fullmatch(key) or len(key) > 128:
                problem = f"Key '{key}' is invalid: keys must be at most 128 characters of [A-Za-z0-9_-]"
            elif key.startswith("consul-"):
                problem = f"Key '{key}' is invalid: Key prefix 'consul-' is reserved for internal use"
            elif not isinstance(value, str) or len(value) > 512:
                problem = f"Value for key '{key}' is too long (limit: 512 characters)"
        if problem:
            raise web.HTTPBadRequest(text=f"Invalid Service Meta: {problem}")

    def _parse_check(self, definition: Any, service: _Service, n: int, count: int) -> _Check:
        d = _fields(definition)
        check_id = d.get("checkid") or d.get("id") or (f"service:{service.id}" + (f":{n}" if count > 1 else ""))
        status = d.get("status") or CRITICAL
        if status not in (PASSING, WARNING, CRITICAL):
            raise web.HTTPBadRequest(text=f"Invalid check: Status {status!r} is not valid")
        if any(d.get(k) for k in ("http", "tcp", "udp", "h2ping", "args", "scriptargs", "dockercontainerid",
                                  "aliasservice", "aliasnode", "osservice")):
            raise web.HTTPBadRequest(text="the Consul stand-in implements only GRPC and TTL checks")
        try:
            check = _Check(id=check_id, name=d.get("name") or f"Service '{service.name}' check",
                           service_id=service.id, service_name=service.name, kind="ttl" if d.get("ttl") else "grpc",
                           status=status, notes=d.get("notes") or "", grpc=d.get("grpc") or "",
                           grpc_use_tls=bool(d.get("grpcusetls")), tls_server_name=d.get("tlsservername") or "",
                           ttl_s=parse_duration(d.get("ttl") or 0),
                           interval_s=parse_duration(d.get("interval") or 0),
                           timeout_s=parse_duration(d.get("timeout") or "10s"))
            after = d.get("deregistercriticalserviceafter")
            if after:
                check.deregister_after_s = max(parse_duration(after), self.min_deregister_after_s)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"Invalid check: {exc}") from None
        if check.kind == "grpc" and not check.grpc:
            raise web.HTTPBadRequest(text="Invalid check: one of GRPC or TTL is required (the stand-in's subset)")
        if check.kind == "grpc" and check.interval_s <= 0:
            raise web.HTTPBadRequest(text="Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP "
                                          "or GRPC checks")
        check.interval_s = max(check.interval_s, self.min_check_interval_s)
        return check

    def _apply_registration(self, service: _Service, checks: list[_Check], replace: bool) -> None:
        old = self._services.get(service.id)
        changed = old is None or old.definition() != service.definition()
        new_ids = {c.id for c in checks}
        stale = [c for c in self._checks.values() if replace and c.service_id == service.id and c.id not in new_ids]
        index = self._bump() if changed or stale or any(c.id not in self._checks for c in checks) else 0
        if changed:
            service.create_index = old.create_index if old is not None else index
            service.modify_index = index
            self._services[service.id] = service
            self._services_index = index
        for check in stale:
            self._remove_check(check)
        loop = asyncio.get_running_loop()
        for check in checks:
            previous = self._checks.pop(check.id, None)
            if previous is not None:  # Consul keeps the status of a check that is registered again
                check.status, check.output, check.critical_since = (previous.status, previous.output,
                                                                    previous.critical_since)
                check.create_index, check.modify_index = previous.create_index, previous.modify_index
                self._stop_check(previous)
            else:
                check.create_index = check.modify_index = index
                check.critical_since = loop.time() if check.status == CRITICAL else None
            self._checks[check.id] = check
            self._start_check(check)
        for check in self._checks.values():
            if check.service_id == service.id:
                check.service_name = service.name
        if index:
            self._name_index[service.name] = index
            if old is not None and old.name != service.name:
                self._name_index[old.name] = index
            self._notify()

    def _remove_service(self, service_id: str) -> None:
        service = self._services.pop(service_id)
        for check in [c for c in self._checks.values() if c.service_id == service_id]:
            self._remove_check(check)
        index = self._bump()
        self._name_index[service.name] = self._services_index = index
        self._notify()

    def _remove_check(self, check: _Check) -> None:
        self._stop_check(check)
        del self._checks[check.id]

    def _start_check(self, check: _Check) -> None:
        if self.running and check.task is None:
            if check.kind == "ttl":  # the TTL runs from the (re)start of the check, as in Consul
                check.ttl_deadline = asyncio.get_running_loop().time() + check.ttl_s
            run = self._run_ttl if check.kind == "ttl" else self._run_grpc
            check.task = asyncio.create_task(run(check), name=f"consul-standin check {check.id}")

    def _stop_check(self, check: _Check) -> None:
        if check.task is not None:
            check.task.cancel()
            check.task = None

    def _update_check(self, check: _Check, status: str, output: str) -> None:
        check.output = output
        if check.status == status or self._checks.get(check.id) is not check:
            return
        check.status = status
        check.critical_since = asyncio.get_running_loop().time() if status == CRITICAL else None
        check.modify_index = self._name_index[check.service_name] = self._bump()
        self._notify()

    async def _run_grpc(self, check: _Check) -> None:
        await asyncio.sleep(self._rng.uniform(0, check.interval_s))  # Consul staggers a check's first run
        while True:
            status, output = await self._probe(check, self.agent_tls)
            self._update_check(check, status, output)
            await asyncio.sleep(check.interval_s)

    @staticmethod
    async def _probe(check: _Check, agent_tls: tuple[bytes, bytes, bytes] | None) -> tuple[str, str]:
        target, _, service = check.grpc.partition("/")
        if check.grpc_use_tls:
            ca, cert, key = agent_tls or (None, None, None)
            options = [("grpc.ssl_target_name_override", check.tls_server_name)] if check.tls_server_name else []
            channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert), options=options)
        else:
            channel = grpc.aio.insecure_channel(target)
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=check.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return CRITICAL, f"gRPC check {check.grpc}: failed: {exc.code().name}: {exc.details()}"
        finally:
            await channel.close()
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return PASSING, f"gRPC check {check.grpc}: success"
        status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return CRITICAL, f"gRPC check {check.grpc}: failed: serving status {status_name}"

    async def _run_ttl(self, check: _Check) -> None:
        loop = asyncio.get_running_loop()
        while True:
            remaining = check.ttl_deadline - loop.time()
            if remaining <= 0:
                self._update_check(check, CRITICAL, "TTL expired")
                check.ttl_deadline = math.inf
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(remaining) else remaining):
                    await check.ttl_reset.wait()
            check.ttl_reset.clear()

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.reap_interval_s)
            for check in list(self._checks.values()):
                since, after = check.critical_since, check.deregister_after_s
                if (since is not None and after is not None and loop.time() - since > after
                        and check.service_id in self._services):
                    self._remove_service(check.service_id)

    async def _deregister(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        service = self._services.get(service_id)
        self._require(request, "service:write", service.name if service else service_id)
        if service is None:
            raise web.HTTPNotFound(text=f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                                        "not the service name.")
        self._remove_service(service_id)
        return web.Response()

    def _service_json(self, s: _Service) -> dict[str, Any]:
        return {"ID": s.id, "Service": s.name, "Tags": s.tags, "Meta": s.meta, "Port": s.port, "Address": s.address,
                "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False, "Datacenter": self.datacenter}

    def _check_json(self, c: _Check) -> dict[str, Any]:
        service = self._services.get(c.service_id)
        return {"Node": self.node, "CheckID": c.id, "Name": c.name, "Status": c.status, "Notes": c.notes,
                "Output": c.output, "ServiceID": c.service_id, "ServiceName": c.service_name,
                "ServiceTags": service.tags if service else [], "Type": c.kind, "Interval": f"{c.interval_s}s"
                if c.kind == "grpc" else "", "Timeout": f"{c.timeout_s}s" if c.kind == "grpc" else "",
                "ExposedPort": 0, "Definition": {}, "CreateIndex": c.create_index, "ModifyIndex": c.modify_index}

    async def _agent_services(self, request: web.Request) -> web.Response:
        self._check_dc(request)
        visible = {} if self._anonymous(request) else self._services
        headers = {"X-Consul-Results-Filtered-By-ACLs": "true"} if len(visible) < len(self._services) else {}
        return web.json_response({sid: self._service_json(s) for sid, s in visible.items()}, headers=headers)

    async def _agent_service(self, request: web.Request) -> web.Response:
        service = self._services.get(request.match_info["id"])
        self._require(request, "service:read", service.name if service else request.match_info["id"])
        if service is None:
            raise web.HTTPNotFound(text=f"unknown service ID: {request.match_info['id']}")
        body = self._service_json(service)
        body["ContentHash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return web.json_response(body, headers={"X-Consul-ContentHash": body["ContentHash"]})

    async def _agent_checks(self, request: web.Request) -> web.Response:
        self._check_dc(request)
        visible = {} if self._anonymous(request) else self._checks
        return web.json_response({cid: self._check_json(c) for cid, c in visible.items()})

    async def _ttl_update(self, request: web.Request) -> web.Response:
        check_id = request.match_info["id"]
        check = self._checks.get(check_id)
        self._require(request, "service:write", check.service_name if check else check_id)
        if check is None:
            raise web.HTTPNotFound(text=f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
                                        "not the check name.")
        if check.kind != "ttl":
            raise web.HTTPInternalServerError(text=f'CheckID "{check_id}" does not have associated TTL')
        status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[request.match_info["verb"]]
        self._update_check(check, status, request.query.get("note", ""))
        check.ttl_deadline = asyncio.get_running_loop().time() + check.ttl_s
        check.ttl_reset.set()
        return web.Response()

    # --- health -----------------------------------------------------------------------------------------------------

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        filtered = self._anonymous(request)
        passing = request.query.get("passing", "false").lower() in ("", "1", "t", "true")
        tags = request.query.getall("tag", [])

        def query() -> tuple[int, list[dict[str, Any]]]:
            instances = [s for s in self._services.values() if s.name == name]
            index = self._name_index.get(name, 0) if instances else self._services_index
            if filtered:
                return index, []
            entries = []
            for s in sorted(instances, key=lambda s: s.id):
                checks = [self._node_check()] + [self._check_json(c) for c in self._checks.values()
                                                 if c.service_id == s.id]
                if all(t in s.tags for t in tags) and not (passing and any(c["Status"] != PASSING for c in checks)):
                    entries.append({"Node": self._node_json(), "Service": {**self._service_json(s),
                                    "CreateIndex": s.create_index, "ModifyIndex": s.modify_index}, "Checks": checks})
            return index, entries

        _, entries, headers = await self._blocking(request, query)
        if filtered and any(s.name == name for s in self._services.values()):
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return web.json_response(entries, headers=headers)

    def _node_json(self) -> dict[str, Any]:
        return {"ID": "00000000-0000-0000-0000-000000000001", "Node": self.node, "Address": "127.0.0.1",
                "Datacenter": self.datacenter, "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
                "Meta": {}, "CreateIndex": 5, "ModifyIndex": 5}

    def _node_check(self) -> dict[str, Any]:
        return {"Node": self.node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": PASSING,
                "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "",
                "ServiceTags": [], "Type": "", "CreateIndex": 5, "ModifyIndex": 5}

    # --- KV ---------------------------------------------------------------------------------------------------------

    def _kv_index(self, prefix: str, recurse: bool) -> int:
        if not recurse:
            entry = self._kv.get(prefix)
            return entry.modify_index if entry else self._kvs_index
        if not prefix:
            return self._kvs_index
        sub = max([e.modify_index for k, e in self._kv.items() if k.startswith(prefix)]
                  + [i for k, i in self._tombstones.items() if k.startswith(prefix)], default=0)
        return sub or self._kvs_index

    @staticmethod
    def _entry_json(e: _Entry) -> dict[str, Any]:
        value = base64.b64encode(e.value).decode() if e.value else None
        return {"LockIndex": 0, "Key": e.key, "Flags": e.flags, "Value": value, "CreateIndex": e.create_index,
                "ModifyIndex": e.modify_index}

    async def _kv_get(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if "separator" in request.query:
            raise web.HTTPBadRequest(text="the Consul stand-in does not implement ?separator")
        recurse = "recurse" in request.query or "keys" in request.query
        anonymous = self._anonymous(request)
        if anonymous and not recurse:
            raise web.HTTPForbidden(text=_ANON.format(perm="key:read", resource=key))

        def query() -> tuple[int, list[_Entry]]:
            if anonymous:
                found: list[_Entry] = []
            elif recurse:
                found = [self._kv[k] for k in sorted(self._kv) if k.startswith(key)]
            else:
                found = [self._kv[key]] if key in self._kv else []
            return self._kv_index(key, recurse), found

        _, entries, headers = await self._blocking(request, query)
        if not entries:
            raise web.HTTPNotFound(text="", headers=headers)
        if "keys" in request.query:
            return web.json_response([e.key for e in entries], headers=headers)
        if "raw" in request.query:
            return web.Response(body=entries[0].value, headers=headers)
        return web.json_response([self._entry_json(e) for e in entries], headers=headers)

    async def _kv_put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if not key:
            raise web.HTTPBadRequest(text="Missing key name")
        self._require(request, "key:write", key)
        self._check_dc(request)
        if "acquire" in request.query or "release" in request.query:
            raise web.HTTPBadRequest(text="the Consul stand-in does not implement sessions")
        value = await request.read()
        if len(value) > MAX_KV_VALUE_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_KV_VALUE_BYTES, actual_size=len(value))
        try:
            flags = int(request.query.get("flags", "0"))
            cas = int(request.query["cas"]) if "cas" in request.query else None
        except ValueError:
            raise web.HTTPBadRequest(text="Invalid flags or cas") from None
        existing = self._kv.get(key)
        if cas is not None and (existing.modify_index if existing else 0) != cas:
            return web.json_response(False)
        index = self._bump()
        self._kv[key] = _Entry(key, value, flags, existing.create_index if existing else index, index)
        self._kvs_index = index
        self._notify()
        return web.json_response(True)

    async def _kv_delete(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        self._require(request, "key:write", key)
        self._check_dc(request)
        recurse = "recurse" in request.query
        if "cas" in request.query:
            entry = self._kv.get(key)
            if recurse or entry is None or str(entry.modify_index) != request.query["cas"]:
                return web.json_response(False)
        doomed = [k for k in self._kv if (k.startswith(key) if recurse else k == key)]
        if doomed:
            index = self._kvs_index = self._bump()
            for k in doomed:
                del self._kv[k]
                self._tombstones[k] = index
            self._notify()
        return web.json_response(True)

    async def _leader(self, request: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:8300")
