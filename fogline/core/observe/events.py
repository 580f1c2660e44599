"""What happened in a fleet, as a master's dashboard lists it: members joining, leaving and restarting,
circuits opening and closing, rollouts stepping, and their gates.

:class:`EventLog` is bounded and numbered; the watchers turn successive observations into events:
:class:`MembershipWatch` (who is there, and since when their process runs) and :class:`ChangeWatch`
(any value per key, e.g. a circuit's state)::

    members = MembershipWatch(log)
    members.observe(now, {"device-1": 1764750000.0})     # id -> process start time (None: unknown)
    members.departed(now)                                # ids that left within ``ghost_s``: shown as down
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from fogline.errors import truncate

EVENT_TEXT_MAX_CHARS = 300
"""An event's text is cut to this: it may quote what a member reported."""

JOIN, LEAVE, RESTART, BREAKER, ROLLOUT, GATE, START = "join", "leave", "restart", "breaker", "rollout", "gate", "start"
HEALTH = "health"
"""A member stopped answering its pages, or answers again."""


@dataclass(frozen=True)
class Event:
    """One thing that happened: when (``t``, wall clock), what kind, to which node, in words."""

    seq: int
    t: float
    kind: str
    node: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "t": self.t, "kind": self.kind, "node": self.node, "text": self.text}


class EventLog:
    """The last ``max_events`` events, numbered from 1 in the order they were added."""

    def __init__(self, max_events: int = 1000, *, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=max_events)
        self._clock = clock
        self._seq = 0

    def add(self, kind: str, node: str, text: str) -> Event:
        """Record an event now; its text (and node) cut to bounds."""
        self._seq += 1
        event = Event(self._seq, self._clock(), kind, truncate(node, 200), truncate(text, EVENT_TEXT_MAX_CHARS))
        self._events.append(event)
        return event

    def since(self, t: float | None = None, *, limit: int = 200) -> list[Event]:
        """The events after time ``t`` (all with None), oldest first, at most the last ``limit``."""
        events = [e for e in self._events if t is None or e.t > t]
        return events[-limit:] if limit > 0 else []


class MembershipWatch:
    """Joins, leaves and restarts from successive views of who is there.

    A member seen again with a later process start time restarted (even if it never left: a supervised
    process can come back within its registration's lifetime); one that comes back after leaving
    within ``ghost_s`` is said to have rejoined. :meth:`departed` is who left within ``ghost_s``.
    """

    def __init__(self, log: EventLog, *, ghost_s: float = 120.0, what: str = "member") -> None:
        self._log = log
        self._ghost_s = ghost_s
        self._what = what
        self._present: dict[str, float | None] = {}
        self._gone: dict[str, float] = {}
        self._primed = False

    def observe(self, now: float, present: Mapping[str, float | None]) -> None:
        """The members there now, each with its process start time (None: not known)."""
        for mid, started in present.items():
            self._seen(now, mid, started)
        for mid in [m for m in self._present if m not in present]:
            del self._present[mid]
            self._gone[mid] = now
            self._log.add(LEAVE, mid, f"{self._what} {mid} left")
        self._primed = True
        for mid in [m for m, t in self._gone.items() if now - t > self._ghost_s]:
            del self._gone[mid]

    def _seen(self, now: float, mid: str, started: float | None) -> None:
        if mid not in self._present:
            left = self._gone.pop(mid, None)
            self._present[mid] = started
            if self._primed:
                again = f" again after {now - left:.0f} s" if left is not None else ""
                self._log.add(JOIN, mid, f"{self._what} {mid} joined{again}")
            return
        before = self._present[mid]
        if started is not None and before is not None and started > before + 0.5:
            self._log.add(RESTART, mid, f"{self._what} {mid} restarted")
        if started is not None:
            self._present[mid] = started

    def departed(self, now: float) -> dict[str, float]:
        """Members that left within ``ghost_s``: id -> when."""
        return {m: t for m, t in self._gone.items() if now - t <= self._ghost_s}


class ChangeWatch:
    """An event whenever the value of a key changes (not for the first value seen of a key).

    ``describe(key, before, after)`` gives the event's (node, text), or None for a change not worth one.
    """

    def __init__(self, log: EventLog, kind: str,
                 describe: Callable[[Hashable, Any, Any], tuple[str, str] | None]) -> None:
        self._log = log
        self._kind = kind
        self._describe = describe
        self._values: dict[Hashable, Any] = {}

    def observe(self, values: Mapping[Hashable, Any]) -> None:
        """The current value of every key; keys not given are forgotten."""
        for key, value in values.items():
            if key in self._values and self._values[key] != value:
                said = self._describe(key, self._values[key], value)
                if said is not None:
                    self._log.add(self._kind, *said)
            self._values[key] = value
        for key in [k for k in self._values if k not in values]:
            del self._values[key]
