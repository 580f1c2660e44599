"""An edge master's region document, as the cloud master's dashboard takes it: checked.

The document is read from the address an edge registered, so it is believed no further than this:
points are ``[t, [kind, a, b], vector]`` with finite, non-negative numbers and short names; nodes have
the page's fields, of their types; events are cut to bounds. Anything else in it is dropped, and a
document not of that shape at all is an :class:`~fogline.errors.InvalidInputError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fogline.errors import InvalidInputError, truncate

NAME_MAX_CHARS = 200
MAX_POINTS = 20_000
MAX_NODES = 4096
MAX_EVENTS = 1000
MAX_VECTOR = 64
_KINDS = frozenset({"traffic", "route"})
_REGION_TIERS = frozenset({"edge", "device", "worker"})
_NODE_KINDS = frozenset({"edge", "device", "worker"})
_HEALTH = frozenset({"healthy", "unhealthy", "down", "unknown"})
_CIRCUITS = frozenset({"closed", "half_open", "open", "ejected"})
_EVENT_KINDS = frozenset({"join", "leave", "restart", "breaker", "rollout", "gate", "start", "health"})


@dataclass
class Region:
    """What the cloud keeps of a region document."""

    ready: bool = False
    points: list[tuple[float, tuple[str, str, str], list[float]]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def checked_region(doc: object) -> Region:
    """The checked content of a region document; InvalidInputError if it is not one."""
    if not isinstance(doc, Mapping):
        raise InvalidInputError("a region document must be a JSON object")
    points, nodes, events = doc.get("points"), doc.get("nodes"), doc.get("events")
    if not isinstance(points, list) or not isinstance(nodes, list) or not isinstance(events, list):
        raise InvalidInputError("a region document needs lists of points, nodes and events")
    return Region(ready=doc.get("ready") is True,
                  points=[p for p in map(_point, points[-MAX_POINTS:]) if p is not None],
                  nodes=[n for n in map(_node, nodes[:MAX_NODES]) if n is not None],
                  events=[e for e in map(_event, events[-MAX_EVENTS:]) if e is not None])


def _name(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > NAME_MAX_CHARS or not value.isprintable():
        return None
    return value


def _one_of(value: Any, allowed: frozenset[str]) -> str | None:
    """``value`` if it is one of the ``allowed`` strings (anything else, unhashable included: None)."""
    return value if isinstance(value, str) and value in allowed else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _point(value: Any) -> tuple[float, tuple[str, str, str], list[float]] | None:
    if not isinstance(value, list) or len(value) != 3:
        return None
    t, key, vector = _number(value[0]), value[1], value[2]
    if t is None or not isinstance(key, list) or len(key) != 3 or not isinstance(vector, list):
        return None
    names = [_name(k) for k in key]
    if None in names or names[0] not in _KINDS or (names[0] == "traffic" and names[1] not in _REGION_TIERS):
        return None
    numbers = [_number(v) for v in vector[:MAX_VECTOR + 1]]
    shortest = 3 if names[0] == "traffic" else 1  # requests, errors, buckets; a route's count
    if len(numbers) < shortest or len(numbers) > MAX_VECTOR or None in numbers:
        return None
    return t, (names[0], names[1], names[2]), numbers  # type: ignore[return-value]


def _node(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    node_id, kind, parent = _name(value.get("id")), _one_of(value.get("kind"), _NODE_KINDS), value.get("parent")
    if node_id is None or kind is None:
        return None
    raw_load = value.get("load")
    load: Mapping[str, Any] = raw_load if isinstance(raw_load, Mapping) else {}
    return {"id": node_id, "kind": kind, "parent": _name(parent), "region": _name(value.get("region")),
            "health": _one_of(value.get("health"), _HEALTH) or "unknown",
            "circuit": _one_of(value.get("circuit"), _CIRCUITS),
            "load": {k: int(_number(load.get(k)) or 0) for k in ("in_flight", "queue_depth")},
            "versions": _versions(value.get("versions")), "address": _name(value.get("address")) or ""}


def _versions(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, list[str]] = {}
    for model, versions in list(value.items())[:64]:
        if _name(model) is not None and isinstance(versions, list):
            out[model] = [v for v in versions[:64] if _name(v) is not None]
    return out


def _event(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping) or _one_of(value.get("kind"), _EVENT_KINDS) is None:
        return None
    t, node_id, text = _number(value.get("t")), _name(value.get("node")), value.get("text")
    if t is None or node_id is None or not isinstance(text, str):
        return None
    return {"t": t, "kind": value["kind"], "node": node_id, "text": truncate(text, 300)}
