"""What a member may claim of itself on the control plane, and how often it may ask to join.

Every field a child registers travels on: into the master's memory, its routing, its status, and
(for an edge master) into its own report to the cloud master. :class:`ControlLimits` bounds each
of them, so that one member, authenticated or not, can neither exhaust a master nor make a
master's own messages to its parent overflow. :func:`parse_host_port` is the one form an address
may take, :func:`check_name` / :func:`check_names` the form of ids, regions, model names and meta,
and :class:`RateLimiter` the register rate per caller.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from fogline.errors import InvalidInputError, echo_name

_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
HOSTNAME_MAX_CHARS = 253
ADDRESS_RULE = ("use host:port with a hostname, an IPv4 address or a [bracketed] IPv6 address, "
                "and a port from 1 to 65535")


@dataclass(frozen=True, kw_only=True)
class ControlLimits:
    """The bounds a master holds its children to (and an edge master its own report to the cloud)."""

    max_members: int = 1024
    """Members one master holds at most; a new one beyond it is refused (RESOURCE_EXHAUSTED)."""
    max_models_per_member: int = 256
    """Model names one member may list (in Register or Heartbeat)."""
    max_name_length: int = 128
    """Characters of an id, a model name, a region, a meta key or a meta value."""
    max_meta_entries: int = 16
    """Meta labels one member may carry."""
    register_rate_per_s: float = 20.0
    """Register calls per second one caller may make, sustained."""
    register_burst: int = 50
    """Register calls one caller may make at once before the rate applies."""

    def __post_init__(self) -> None:
        if min(self.max_members, self.max_models_per_member, self.max_name_length, self.register_burst) < 1:
            raise ValueError("control limits need max_members, max_models_per_member, max_name_length "
                             "and register_burst of at least 1")
        if self.max_meta_entries < 0 or self.register_rate_per_s <= 0:
            raise ValueError("control limits need max_meta_entries >= 0 and register_rate_per_s > 0")

    def name_fits(self, name: str) -> bool:
        """Whether ``name`` passes :func:`check_name` (for a member trimming what it reports)."""
        return bool(name) and len(name) <= self.max_name_length and name.isprintable()


DEFAULT_LIMITS = ControlLimits()
"""The limits a master holds its children to unless configured otherwise."""


def check_name(what: str, value: str, limits: ControlLimits, *, allow_empty: bool = False) -> None:
    """InvalidInputError unless ``value`` is printable and at most ``max_name_length`` characters
    (and not empty, unless ``allow_empty``); ``what`` names the field in the message."""
    if not value:
        if not allow_empty:
            raise InvalidInputError(f"{what} is empty; give it a name")
        return
    if len(value) > limits.max_name_length:
        raise InvalidInputError(f"{what} {echo_name(value)} is {len(value)} characters long; "
                                f"at most {limits.max_name_length} are allowed")
    if not value.isprintable():
        raise InvalidInputError(f"{what} {echo_name(value)} holds control characters; use printable ones only")


def check_names(what: str, names: Collection[str], limits: ControlLimits) -> None:
    """InvalidInputError unless ``names`` are at most ``max_models_per_member``, each a valid name."""
    if len(names) > limits.max_models_per_member:
        raise InvalidInputError(f"{len(names)} {what}s listed; at most {limits.max_models_per_member} are "
                                f"allowed per member: serve fewer models on it")
    for name in names:
        check_name(what, name, limits)


def parse_host_port(text: str, what: str = "address") -> tuple[str, int]:
    """``(host, port)`` of ``host:port``; InvalidInputError saying what to fix otherwise. The host is a
    hostname, an IPv4 address or a bracketed IPv6 address (returned without its brackets)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InvalidInputError(f"{what} {echo_name(text)} is not host:port; {ADDRESS_RULE}")
    return _host(host, text, what), _port(port_text, text, what)


def _port(port_text: str, text: str, what: str) -> int:
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
        raise InvalidInputError(f"{what} {echo_name(text)} has no valid port; {ADDRESS_RULE}")
    return int(port_text)


def _host(host: str, text: str, what: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        return _ip(host[1:-1], ipaddress.IPv6Address, text, what)
    labels = host.removesuffix(".").split(".")
    if labels[-1].isascii() and labels[-1].isdigit():  # a name ending in digits can only be an IPv4 address
        return _ip(host, ipaddress.IPv4Address, text, what)
    if len(host) > HOSTNAME_MAX_CHARS or not all(_LABEL.match(label) for label in labels):
        raise InvalidInputError(f"{what} {echo_name(text)} has no valid host; {ADDRESS_RULE}")
    return host


def _ip(host: str, kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], text: str, what: str) -> str:
    try:
        kind(host)
    except ValueError:
        raise InvalidInputError(f"{what} {echo_name(text)} has no valid IP address; {ADDRESS_RULE}") from None
    return host


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class RateLimiter:
    """A token bucket per caller key: ``burst`` calls at once, then ``rate_per_s`` sustained.

    Memory is bounded: a key idle long enough for its bucket to be full again is forgotten (a fresh
    bucket is the same), and beyond ``max_keys`` live keys every new key shares one overflow bucket,
    so that callers inventing keys can neither grow the table nor reset a throttled key's bucket.
    """

    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a rate limiter needs rate_per_s > 0, burst >= 1 and max_keys >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._idle_s = burst / rate_per_s  # after this long without a call a bucket is full again
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first
        self._overflow = _Bucket(float(burst), clock())

    def try_acquire(self, key: str) -> float | None:
        """Take one call for ``key``: None when allowed, else the seconds until one would be."""
        now = self._clock()
        self._forget_idle(now)
        bucket = self._bucket(key, now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated_at) * self.rate_per_s)
        bucket.updated_at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / self.rate_per_s

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        if len(self._buckets) >= self.max_keys:
            return self._overflow
        bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        return bucket

    def _forget_idle(self, now: float) -> None:
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if now - oldest.updated_at < self._idle_s:
                return
            self._buckets.popitem(last=False)
