"""Discovery through Consul (DESIGN.md §4), on py-consul's asyncio client.

The one module of Fogline that imports ``consul``. It gives:

- :class:`ConsulSettings`: where Consul is and how to talk to it, from Consul's own environment variables;
- :func:`member_to_service` / :func:`member_from_health_entry`: a :class:`~fogline.registry.Member` as a
  Consul service ``fogline-<service>`` (tag ``region:<region>``; meta ``region``, ``capacity``,
  ``http_address`` and ``models``, continued in ``models_1``, ``models_2``... when the list is long);
- :class:`ConsulControlPlane`: the ``ControlPlane`` a :class:`~fogline.membership.MembershipLoop` drives,
  registering the member with the local agent and a gRPC health check against its ``grpc.health.v1``;
- :class:`ServiceWatch` and :class:`KVWatch`: blocking-query watches that keep the last known state while
  Consul cannot be reached.

Errors from py-consul and aiohttp become :class:`~fogline.errors.FoglineError` here: Consul unreachable,
timing out or failing (5xx) is ``UnavailableError``; a request Consul rejects, an ACL denial included, is
``InvalidInputError`` (our configuration is wrong; retrying will not help until someone fixes it).
The ACL token never appears in a repr, a message or a log record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio
from consul.exceptions import BadRequest, ClientError

from fogline.errors import FoglineError, InvalidInputError, UnavailableError
from fogline.lifecycle import stop_task
from fogline.registry import Load, Member

log = logging.getLogger(__name__)

SERVICES = frozenset({"cloud", "edge", "device", "worker"})
SERVICE_PREFIX = "fogline-"
REGION_TAG_PREFIX = "region:"
# Consul's limits on service meta (structs.ValidateServiceMetadata).
META_MAX_PAIRS = 64
META_MAX_KEY_CHARS = 128
META_MAX_VALUE_CHARS = 512
_META_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_RESERVED_META = frozenset({"region", "capacity", "http_address", "models"})
_TRUE = frozenset({"1", "t", "true"})  # what Go's strconv.ParseBool takes as true

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class ConsulSettings:
    """How to reach the local Consul agent. ``address`` may carry a scheme (``https://host:8501``)."""

    address: str = "127.0.0.1:8500"
    """host:port of the agent's HTTP API; the port defaults to 8500 (http) or 8501 (https)."""
    token: str | None = field(default=None, repr=False)
    """ACL token sent as ``X-Consul-Token``; None: the agent's default (anonymous) token."""
    scheme: str = ""
    """"http" or "https"; empty: taken from ``address``, else http."""
    verify: bool | str = True
    """Verify the agent's TLS certificate: True (system CAs), False, or the path of a CA bundle."""
    client_cert: str | None = None
    """Client certificate (PEM) for agents with ``verify_incoming``."""
    client_key: str | None = None
    """Key of ``client_cert``; None if the certificate file holds it."""
    datacenter: str | None = None
    """Datacenter to query; None: the agent's own."""

    def __post_init__(self) -> None:
        scheme, sep, rest = self.address.partition("://")
        if sep:
            if scheme not in ("http", "https"):
                raise InvalidInputError(f"Consul address {self.address!r}: the scheme must be http or https")
            object.__setattr__(self, "address", rest.rstrip("/"))
            if scheme == "https" or not self.scheme:  # NOTE: like Consul's own client, never revert to http
                object.__setattr__(self, "scheme", scheme)
        if not self.scheme:
            object.__setattr__(self, "scheme", "http")
        if self.scheme not in ("http", "https"):
            raise InvalidInputError(f"Consul scheme {self.scheme!r}: use http or https")
        if self.client_key and not self.client_cert:
            raise InvalidInputError("a Consul client key needs its client certificate (CONSUL_CLIENT_CERT)")
        self._split()  # validates the address

    @property
    def host(self) -> str:
        return self._split()[0]

    @property
    def port(self) -> int:
        return self._split()[1]

    def _split(self) -> tuple[str, int]:
        parts = urlsplit("//" + self.address)
        try:
            port = parts.port or (8501 if self.scheme == "https" else 8500)
        except ValueError:
            port = 0
        if not parts.hostname or not port or parts.path or parts.query:
            raise InvalidInputError(f"Consul address {self.address!r} must be host:port (a port from 1 to 65535)")
        return parts.hostname, port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __repr__(self) -> str:
        token = "<set>" if self.token else "<none>"
        return (f"ConsulSettings(url={self.url}, token={token}, verify={self.verify!r}, "
                f"client_cert={self.client_cert!r}, datacenter={self.datacenter!r})")

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> ConsulSettings:
        """Settings from Consul's variables (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN[_FILE], CONSUL_HTTP_SSL,
        CONSUL_HTTP_SSL_VERIFY, CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY), then ``overrides``.
        As in Consul's own client, a token file wins over CONSUL_HTTP_TOKEN."""
        values: dict[str, Any] = {}
        if environ.get("CONSUL_HTTP_ADDR"):
            values["address"] = environ["CONSUL_HTTP_ADDR"]
        values["token"] = environ.get("CONSUL_HTTP_TOKEN") or None
        token_file = environ.get("CONSUL_HTTP_TOKEN_FILE")
        if token_file:
            try:
                with open(token_file, encoding="utf-8") as f:
                    values["token"] = f.read().strip() or values["token"]
            except OSError as exc:
                raise InvalidInputError(f"cannot read CONSUL_HTTP_TOKEN_FILE {token_file}: {exc.strerror}") from None
        if environ.get("CONSUL_HTTP_SSL", "").lower() in _TRUE:
            values["scheme"] = "https"
        if environ.get("CONSUL_CACERT"):
            values["verify"] = environ["CONSUL_CACERT"]
        if environ.get("CONSUL_HTTP_SSL_VERIFY", "true").lower() not in _TRUE:
            values["verify"] = False
        values["client_cert"] = environ.get("CONSUL_CLIENT_CERT") or None
        values["client_key"] = environ.get("CONSUL_CLIENT_KEY") or None
        values.update(overrides)
        return cls(**values)


def open_client(settings: ConsulSettings) -> consul.aio.Consul:
    """A py-consul asyncio client for ``settings``; call from a coroutine, and ``await client.close()``."""
    if settings.client_cert and settings.verify is False:
        # NOTE: py-consul's aio client loads the client certificate only when it verifies the server.
        raise InvalidInputError("a Consul client certificate needs server verification on: unset "
                                "CONSUL_HTTP_SSL_VERIFY=false, or give the agent's CA with CONSUL_CACERT")
    cert = (settings.client_cert, settings.client_key) if settings.client_key else settings.client_cert
    with warnings.catch_warnings():
        # NOTE: py-consul passes aiohttp's deprecated verify_ssl/ssl_context arguments on every client.
        warnings.simplefilter("ignore", DeprecationWarning)
        client = consul.aio.Consul(host=settings.host, port=settings.port, scheme=settings.scheme,
                                   verify=settings.verify, cert=cert, dc=settings.datacenter)
    client.token = settings.token  # NOTE: py-consul lets CONSUL_HTTP_TOKEN override an explicit token
    return client


async def call_consul(settings: ConsulSettings, action: str, request: Awaitable[T], *, timeout_s: float) -> T:
    """Await a py-consul ``request``, turning its failures into FoglineErrors that say what to fix."""
    try:
        return await _within(timeout_s, request)
    except (consul.ACLPermissionDenied, consul.ACLDisabled) as exc:
        raise InvalidInputError(_scrub(settings, _acl_message(settings, action, str(exc)))) from None
    except (BadRequest, ClientError) as exc:
        raise InvalidInputError(_scrub(settings, f"Consul at {settings.url} rejected the request to {action}: "
                                                 f"{_short(exc)}")) from None
    except consul.ConsulException as exc:
        if isinstance(exc, consul.Timeout) or str(exc)[:1] == "5":
            message = f"Consul at {settings.url} failed to {action}: {_short(exc)}"
            raise UnavailableError(_scrub(settings, message)) from None
        raise InvalidInputError(_scrub(settings, (
            f"what answers at {settings.url} is not a Consul agent ({_short(exc)}) while trying to {action}; "
            "check CONSUL_HTTP_ADDR"))) from None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        reason = f"no answer within {timeout_s:g}s" if isinstance(exc, asyncio.TimeoutError) else _short(exc)
        raise UnavailableError(_scrub(settings, (
            f"Consul at {settings.url} is unreachable ({reason}) while trying to {action}; "
            "check CONSUL_HTTP_ADDR and that the local agent runs"))) from None


async def _within(timeout_s: float, request: Awaitable[T]) -> T:
    if sys.version_info >= (3, 11):
        # NOTE: not wait_for: on 3.11 it can swallow a cancellation that races the answer (gh-86296),
        # and a loop being stopped would then go on forever.
        async with asyncio.timeout(timeout_s):
            return await request
    return await asyncio.wait_for(request, timeout_s)  # pragma: no cover


def _acl_message(settings: ConsulSettings, action: str, body: str) -> str:
    token = "the ACL token (set)" if settings.token else "no ACL token (anonymous)"
    if "ACL not found" in body:
        return (f"Consul at {settings.url} does not know the ACL token it was given to {action}: "
                "set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE to a valid token")
    return (f"Consul at {settings.url} denied permission to {action} with {token}: {body.strip()[:300]}; "
            "give the token a policy with that permission, or set CONSUL_HTTP_TOKEN")


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _scrub(settings: ConsulSettings, message: str) -> str:
    return message.replace(settings.token, "<token>") if settings.token else message


def _duration(seconds: float) -> str:
    """A Go duration string Consul parses ("1500ms")."""
    return f"{max(1, round(seconds * 1000))}ms"


# --- Member <-> Consul service ---------------------------------------------------------------------------


def service_name(service: str) -> str:
    """The Consul service name of a Fogline service ("edge" -> "fogline-edge")."""
    if service not in SERVICES:
        raise InvalidInputError(f"service {service!r} cannot go into Consul; expected one of {sorted(SERVICES)}")
    return SERVICE_PREFIX + service


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(f"member address {address!r} must be host:port")
    return host.strip("[]"), int(port)


def _encode_models(models: frozenset[str]) -> list[str]:
    """The sorted model names as comma-separated chunks of at most META_MAX_VALUE_CHARS characters."""
    chunks: list[str] = []
    for name in sorted(models):
        if "," in name or len(name) > META_MAX_VALUE_CHARS:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise InvalidInputError(f"model name {shown!r} cannot go into Consul meta: it must have no comma "
                                    f"and at most {META_MAX_VALUE_CHARS} characters")
        if chunks and len(chunks[-1]) + 1 + len(name) <= META_MAX_VALUE_CHARS:
            chunks[-1] += "," + name
        else:
            chunks.append(name)
    return chunks or [""]


def _check_meta(meta: dict[str, str], member_id: str) -> None:
    if len(meta) > META_MAX_PAIRS:
        raise InvalidInputError(f"member {member_id} needs {len(meta)} Consul meta pairs, more than Consul's "
                                f"{META_MAX_PAIRS}: serve fewer models per member or shorten its meta")
    for key, value in meta.items():
        if not key or len(key) > META_MAX_KEY_CHARS or not set(key) <= _META_KEY_CHARS or key.startswith("consul-"):
            raise InvalidInputError(f"member {member_id}: meta key {key!r} is not valid in Consul (at most "
                                    f"{META_MAX_KEY_CHARS} characters of A-Z a-z 0-9 _ -, no 'consul-' prefix)")
        if len(value) > META_MAX_VALUE_CHARS:
            raise InvalidInputError(f"member {member_id}: meta {key!r} is longer than Consul's "
                                    f"{META_MAX_VALUE_CHARS} characters")


def member_to_service(member: Member) -> dict[str, Any]:
    """The registration of ``member``: name, service_id, address, port, tags, meta (py-consul's arguments)."""
    reserved = [k for k in member.meta if k in _RESERVED_META or k.startswith("models_")]
    if reserved:
        raise InvalidInputError(f"member {member.id}: meta keys {reserved} are reserved for Fogline's own fields")
    host, port = _split_address(member.address)
    chunks = _encode_models(member.models)
    meta = {"region": member.region, "capacity": str(member.capacity), "http_address": member.http_address,
            "models": chunks[0], **{f"models_{i}": chunk for i, chunk in enumerate(chunks[1:], 1)}, **member.meta}
    _check_meta(meta, member.id)
    tags = [REGION_TAG_PREFIX + member.region] if member.region else []
    return {"name": service_name(member.service), "service_id": member.id, "address": host, "port": port,
            "tags": tags, "meta": meta}


def member_from_health_entry(entry: Mapping[str, Any]) -> Member:
    """The Member of one entry of ``/v1/health/service/<name>``."""
    service = entry["Service"]
    name = service["Service"]
    meta = dict(service.get("Meta") or {})
    host = service.get("Address") or (entry.get("Node") or {}).get("Address", "")
    address = f"[{host}]:{service['Port']}" if ":" in host else f"{host}:{service['Port']}"
    models = [meta.pop("models", "")]
    n = 1
    while f"models_{n}" in meta:
        models.append(meta.pop(f"models_{n}"))
        n += 1
    try:
        capacity = int(meta.pop("capacity", "0") or 0)
    except ValueError:
        raise InvalidInputError(f"Consul service {service['ID']}: meta capacity is not a number") from None
    return Member(id=service["ID"], service=name.removeprefix(SERVICE_PREFIX), address=address,
                  region=meta.pop("region", ""), http_address=meta.pop("http_address", ""), capacity=capacity,
                  models=frozenset(m for chunk in models for m in chunk.split(",") if m), meta=meta)


# --- Registration --------------------------------------------------------------------------------------------


class ConsulControlPlane:
    """Registers a member with the local Consul agent (implements ``fogline.membership.ControlPlane``).

    Consul, not we, judges the member's health: the agent calls its ``grpc.health.v1`` every
    ``check_interval_s`` and deregisters it once critical for ``deregister_critical_after_s``.
    The heartbeat only confirms the agent still knows the member (an agent restarted with no state
    does not) and re-registers when its model list changed. Load is not reported to Consul.
    """

    def __init__(self, settings: ConsulSettings, *, check_interval_s: float = 2.0, check_timeout_s: float = 1.0,
                 deregister_critical_after_s: float = 60.0, heartbeat_interval_s: float = 5.0,
                 health_service: str = "", request_timeout_s: float = 5.0) -> None:
        self.settings = settings
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
        return consul.Check.grpc(target, _duration(self.check_interval_s), timeout=_duration(self.check_timeout_s),
                                 deregister=_duration(self.deregister_critical_after_s))

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
        self._registered.pop(member_id, None)
        await self._call(f"deregister {member_id}", lambda c: c.agent.service.deregister(member_id))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


# --- Watches -------------------------------------------------------------------------------------------------


class _BlockingWatch(Generic[T]):
    """A blocking-query loop: ``index`` + jittered ``wait``; capped, jittered backoff on errors, keeping
    the last known value meanwhile; ``on_change`` only when the value changed (and on the first sync)."""

    def __init__(self, settings: ConsulSettings, on_change: Callable[[T], None], *, name: str,
                 wait_s: float = 60.0, min_backoff_s: float = 0.1, max_backoff_s: float = 30.0,
                 request_timeout_s: float = 5.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.settings = settings
        self.name = name
        self.wait_s = wait_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.request_timeout_s = request_timeout_s
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self.connected = False
        self.last_error: str | None = None
        self.last_index = 0
        self.last_sync: float | None = None
        self.errors = 0
        self.value: T | None = None
        self.synced = asyncio.Event()
        self._client: consul.aio.Consul | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._client = open_client(self.settings)
        self._task = asyncio.create_task(self._run(), name=f"consul-watch {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        if self._client is not None:
            await self._client.close()
            self._client = None

    def status(self) -> dict[str, Any]:
        """The watch's state for ``/v1/status`` and metrics."""
        age = None if self.last_sync is None else round(self._clock() - self.last_sync, 3)
        return {"watch": self.name, "connected": self.connected, "last_error": self.last_error,
                "last_index": self.last_index, "last_sync_age_s": age, "errors": self.errors}

    async def _query(self, client: consul.aio.Consul, index: int, wait: str) -> tuple[Any, Any]:
        raise NotImplementedError

    def _convert(self, data: Any) -> T:
        raise NotImplementedError

    async def _run(self) -> None:
        assert self._client is not None
        client = self._client
        backoff_s = self.min_backoff_s
        while True:
            wait_s = self.wait_s * (1 - 0.1 * self._rng.random())  # spread the watchers' wake-ups
            try:
                index, data = await call_consul(
                    self.settings, f"watch {self.name}", self._query(client, self.last_index, _duration(wait_s)),
                    timeout_s=wait_s * 17 / 16 + self.request_timeout_s)  # Consul adds up to wait/16
                value = self._convert(data)
            except FoglineError as err:
                self._failed(err, backoff_s)
                await self._sleep(min(self.max_backoff_s, backoff_s * (0.5 + self._rng.random())))
                backoff_s = min(self.max_backoff_s, backoff_s * 2)
                continue
            backoff_s = self.min_backoff_s
            self._synced(int(index), value)

    def _failed(self, err: FoglineError, backoff_s: float) -> None:
        self.errors += 1
        if self.connected or self.last_error is None:
            log.warning("Consul watch %s lost Consul (%s); keeping the last known state", self.name, err)
        else:
            log.debug("Consul watch %s: still no Consul (%s)", self.name, err)
        self.connected = False
        self.last_error = str(err)
        self.last_index = 0  # NOTE: the first query after an outage answers at once with the current state

    def _synced(self, index: int, value: T) -> None:
        if not self.connected and self.last_error is not None:
            log.info("Consul watch %s reconnected", self.name)
        self.connected = True
        self.last_error = None
        self.last_sync = self._clock()
        # Consul: reset an index that went backwards, never block on 0.
        self.last_index = 0 if index < self.last_index else max(index, 1)
        first = not self.synced.is_set()
        self.synced.set()
        if first or value != self.value:
            self.value = value
            try:
                self._on_change(value)
            except Exception:
                log.exception("Consul watch %s: on_change failed", self.name)


class ServiceWatch(_BlockingWatch[list[Member]]):
    """The passing members of one Fogline service (optionally of one region), by blocking queries on
    ``/v1/health/service/fogline-<service>?passing``. ``on_change`` gets them sorted by id."""

    def __init__(self, settings: ConsulSettings, service: str, on_change: Callable[[list[Member]], None], *,
                 region: str | None = None, **options: Any) -> None:
        scope = f"{service}@{region}" if region else service
        super().__init__(settings, on_change, name=scope, **options)
        self.service_name = service_name(service)
        self.region = region

    @property
    def members(self) -> list[Member]:
        """The last known members (empty before the first sync)."""
        return self.value or []

    async def _query(self, client: consul.aio.Consul, index: int, wait: str) -> tuple[Any, Any]:
        tag = REGION_TAG_PREFIX + self.region if self.region else None
        return await client.health.service(self.service_name, index=index or None, wait=wait, passing=True, tag=tag)

    def _convert(self, data: Any) -> list[Member]:
        members = []
        for entry in data or []:
            try:
                members.append(member_from_health_entry(entry))
            except (InvalidInputError, KeyError, TypeError, ValueError) as exc:
                log.warning("Consul watch %s: skipping a malformed instance (%s)", self.name, exc)
        return sorted(members, key=lambda m: m.id)


class KVWatch(_BlockingWatch[dict[str, bytes]]):
    """The keys under a KV ``prefix`` and their values (a missing value is b""), by blocking queries."""

    def __init__(self, settings: ConsulSettings, prefix: str, on_change: Callable[[dict[str, bytes]], None],
                 **options: Any) -> None:
        if prefix.startswith("/"):
            raise InvalidInputError(f"Consul KV prefix {prefix!r} must not start with '/'")
        super().__init__(settings, on_change, name=f"kv:{prefix}", **options)
        self.prefix = prefix

    @property
    def values(self) -> dict[str, bytes]:
        return self.value or {}

    async def _query(self, client: consul.aio.Consul, index: int, wait: str) -> tuple[Any, Any]:
        return await client.kv.get(self.prefix, index=index or None, wait=wait, recurse=True)

    def _convert(self, data: Any) -> dict[str, bytes]:
        return {entry["Key"]: entry.get("Value") or b"" for entry in data or []}
