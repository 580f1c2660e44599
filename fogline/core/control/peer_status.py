"""What the cloud master copies from an edge master's REST status into ``/v1/topology``, checked.

An edge's ``/v1/status`` is read from the ``http_address`` the edge registered: whatever answers
there is believed no further than this module lets it. :func:`edge_devices` keeps the device
fields an edge really reports (``edge_master.master.EdgeMaster.status``), each of its type and
within :class:`~fogline.core.control.limits.ControlLimits` (and ``checked``, whether the device
passed its health check, for an edge that lists unchecked ones), and drops every other key; a status
that is not of that shape is *malformed* (None), and the cloud shows that edge unhealthy with no
devices rather than repeat it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from fogline.core.control.limits import ControlLimits, parse_host_port
from fogline.core.routing.breaker import BreakerState
from fogline.errors import InvalidInputError, truncate

COUNT_MAX = 2**31 - 1
"""The largest count (capacity, load, breaker counters) a status may report: the control plane's int32."""
REASON_MAX_CHARS = 256
"""Free text (a breaker's last trip reason) is cut to this many characters, not refused."""


class Malformed(ValueError):
    """A status field of the wrong type or out of bounds."""


Check = Callable[[Any], Any]
"""A field's check: the value to keep, or :class:`Malformed`."""


def edge_devices(status: object, limits: ControlLimits) -> list[dict[str, Any]] | None:
    """The ``devices`` of an edge master's status, each cut to the known fields with checked values;
    None if the status is not a dict, or its devices are not a list of at most ``max_members`` dicts
    of that shape (each with an ``id``)."""
    if not isinstance(status, Mapping):
        return None
    devices = status.get("devices")
    if not isinstance(devices, list) or len(devices) > limits.max_members:
        return None
    checks = _device_checks(limits)
    try:
        return [_device(d, checks) for d in devices]
    except Malformed:
        return None


def _device(value: object, checks: Mapping[str, Check]) -> dict[str, Any]:
    device = _fields(value, checks)
    if "id" not in device:
        raise Malformed("a device without an id")
    return device


def _fields(value: object, checks: Mapping[str, Check]) -> dict[str, Any]:
    """The known keys of ``value`` (a dict), each checked; other keys are dropped."""
    if not isinstance(value, Mapping):
        raise Malformed("not an object")
    return {key: check(value[key]) for key, check in checks.items() if key in value}


def _device_checks(limits: ControlLimits) -> dict[str, Check]:
    return {"id": _name(limits), "address": _address, "http": _address, "models": _names(limits),
            "capacity": _count, "load": _object(_LOAD_CHECKS), "outstanding": _count, "healthy": _flag,
            "breaker": _optional(_object(_BREAKER_CHECKS)), "checked": _flag, "versions": _versions(limits)}


def _name(limits: ControlLimits) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not limits.name_fits(value):
            raise Malformed("not a name")
        return value
    return check


def _names(limits: ControlLimits) -> Check:
    name = _name(limits)

    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or len(value) > limits.max_models_per_member:
            raise Malformed("not a list of names")
        return [name(v) for v in value]
    return check


def _versions(limits: ControlLimits) -> Check:
    """Model name -> the versions loaded (a device's ``versions``), within the limits."""
    name, names = _name(limits), _names(limits)

    def check(value: Any) -> dict[str, list[str]]:
        if not isinstance(value, Mapping) or len(value) > limits.max_models_per_member:
            raise Malformed("not an object of model versions")
        return {name(model): names(versions) for model, versions in value.items()}
    return check


def _address(value: Any) -> str:
    if not isinstance(value, str):
        raise Malformed("not an address")
    if value:
        try:
            parse_host_port(value)
        except InvalidInputError:
            raise Malformed("not host:port") from None
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= COUNT_MAX:
        raise Malformed("not a count")
    return value


def _number(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Malformed("not a finite number")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Malformed("not true or false")
    return value


def _reason(value: Any) -> str:
    if not isinstance(value, str):
        raise Malformed("not text")
    text = truncate(value, REASON_MAX_CHARS)
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _state(value: Any) -> str:
    if not isinstance(value, str) or value not in _BREAKER_STATES:
        raise Malformed("not a breaker state")
    return value


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _object(checks: Mapping[str, Check]) -> Check:
    return lambda value: _fields(value, checks)


_BREAKER_STATES = frozenset(state.value for state in BreakerState)
_LOAD_CHECKS: dict[str, Check] = {"in_flight": _count, "queue_depth": _count}
_BREAKER_CHECKS: dict[str, Check] = {
    "state": _state, "failure_rate": _number, "slow_call_rate": _number, "calls_in_window": _count,
    "consecutive_failures": _count, "trips": _count, "consecutive_trips": _count,
    "last_trip_reason": _optional(_reason), "open_until": _optional(_number),
    "open_remaining_s": _optional(_number), "probes_in_flight": _count, "probe_successes": _count,
    "rejections": _count, "expired_probes": _count,
}
"""The fields of ``CircuitBreaker.snapshot()``."""
