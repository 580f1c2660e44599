"""Discovery through Consul (DESIGN.md §4), on py-consul's asyncio client.

The one module of Fogline that imports ``consul``. It gives:

- :class:`ConsulSettings`: where Consul is and how to talk to it, from Consul's own environment variables;
- :func:`member_to_service` / :func:`member_from_health_entry`: a :class:`~fogline.core.control.registry.Member` as a
  Consul service ``fogline-<service>`` (tag ``region:<region>``; meta ``region``, ``capacity``,
  ``http_address`` and ``models``, continued in ``models_1``, ``models_2``... when the list is long);
- :class:`ConsulControlPlane`: the ``ControlPlane`` a :class:`~fogline.core.control.membership.MembershipLoop` drives,
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
import sys
import warnings
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio
from consul.exceptions import BadRequest, ClientError

from fogline.core.control.registry import Member
from fogline.errors import InvalidInputError, UnavailableError

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
