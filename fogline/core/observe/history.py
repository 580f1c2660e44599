"""A short in-memory history of a fleet's traffic, one point a second, kept by a master for its dashboard.

A process's metrics are cumulative totals; :class:`Deltas` turns successive readings of them into what
happened in between (a total that went down is a restarted process: its new total is the delta), and
:class:`TrafficHistory` keeps those deltas per second and per key for ``window_s``, summing what several
sources report for the same second and key (the devices of a region, the regions of the cloud)::

    deltas, history = Deltas(), TrafficHistory(bounds_s=LATENCY_BUCKETS_S)
    for key, totals in reading.items():                 # key: (tier, model); totals: Traffic.vector(...)
        history.add(t, key, deltas.delta(("device-1", key), totals))
    history.series(since=t0)                            # rps, error rate, p50/p99 per key, per second

A traffic vector is ``[requests, errors, c_1 .. c_n, c_inf]``: requests and errors (non-OK answers), then
the cumulative counts of successful requests at or under each latency bound (Prometheus's ``le``
buckets), the last one being ``+Inf``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Hashable, Sequence
from typing import Any

Vector = list[float]
Key = tuple[str, ...]
"""A history's key: ``("traffic", tier, model)`` or ``("route", model, route)``."""
WINDOW_S = 900.0
"""How far back the dashboard's history reaches: 15 minutes."""


class Deltas:
    """What changed between successive readings of cumulative totals, per key.

    A key seen for the first time gives no delta (its whole past is not this second's traffic), unless
    it is ``new`` (a series its source created since the last reading: all of it is recent); a total
    that decreased means its process restarted, and the new total is what it did since.
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        self._last: OrderedDict[Hashable, Vector] = OrderedDict()
        self._max_keys = max_keys

    def delta(self, key: Hashable, totals: Sequence[float], *, new: bool = False) -> Vector | None:
        """``totals`` minus the last reading of ``key`` (the first time: None, or ``totals`` if ``new``);
        remembers ``totals``."""
        last = self._last.pop(key, None)
        self._last[key] = list(totals)
        if len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        if last is None:
            return list(totals) if new else None
        if len(last) != len(totals):
            return None
        if any(now < before for now, before in zip(totals, last, strict=True)):
            return list(totals)  # restarted: counting from zero again
        return [now - before for now, before in zip(totals, last, strict=True)]

    def forget(self, sources: Collection[Hashable]) -> None:
        """Drop the readings of keys whose first element (their source) is not in ``sources`` (those
        that left). Keys that are not tuples are kept."""
        for key in [k for k in self._last if isinstance(k, tuple) and k and k[0] not in sources]:
            del self._last[key]


class TrafficHistory:
    """Per-second sums of vectors per key over the last ``window_s`` (see the module).

    ``bounds_s`` are the latency buckets' upper bounds (without ``+Inf``) that quantiles are read from.
    At most ``max_keys`` keys are kept in one second (the rest of that second is dropped: bounded memory
    whatever members report).
    """

    def __init__(self, *, bounds_s: Sequence[float], window_s: float = WINDOW_S, step_s: float = 1.0,
                 max_keys: int = 512) -> None:
        self.bounds_s = tuple(bounds_s)
        self.window_s = window_s
        self.step_s = step_s
        self._max_keys = max_keys
        self._points: dict[float, dict[Key, Vector]] = {}

    def slot(self, t: float) -> float:
        """The start of the step holding time ``t``."""
        return math.floor(t / self.step_s) * self.step_s

    def add(self, t: float, key: Key, vector: Sequence[float] | None) -> None:
        """Add ``vector`` to ``key``'s point of the step holding ``t`` (None: nothing to add)."""
        if vector is None:
            return
        point = self._points.setdefault(self.slot(t), {})
        current = point.get(key)
        if current is None:
            if len(point) < self._max_keys:
                point[key] = list(vector)
        elif len(current) == len(vector):
            for i, value in enumerate(vector):
                current[i] += value

    def trim(self, now: float) -> None:
        """Forget the points older than the window."""
        cutoff = now - self.window_s
        for t in [t for t in self._points if t < cutoff]:
            del self._points[t]

    def points(self, since: float | None = None,
               until: float | None = None) -> list[tuple[float, dict[Key, Vector]]]:
        """(t, {key: vector}) of each step after ``since`` and at or before ``until``, oldest first."""
        return sorted((t, p) for t, p in self._points.items()
                      if (since is None or t > since) and (until is None or t <= until))

    def totals(self, since: float, until: float | None = None) -> dict[Key, Vector]:
        """Each key's vectors summed over the steps after ``since`` (and at or before ``until``)."""
        out: dict[Key, Vector] = {}
        for _, point in self.points(since, until):
            for key, vector in point.items():
                current = out.setdefault(key, [0.0] * len(vector))
                if len(current) == len(vector):
                    for i, value in enumerate(vector):
                        current[i] += value
        return out

    def series(self, since: float | None = None, until: float | None = None, *,
               kind: str | None = None) -> dict[Key, dict[str, list[Any]]]:
        """Per key (whose first element is ``kind``, when given), one entry a step (a step the key had no
        traffic in is 0 requests): ``t``, ``rps``, ``error_rate`` (0..1), ``p50_ms`` and ``p99_ms`` (None
        where no request succeeded)."""
        steps = self.points(since, until)
        keys = {key for _, point in steps for key in point if kind is None or key[0] == kind}
        out: dict[Key, dict[str, list[Any]]] = {}
        for key in keys:
            line: dict[str, list[Any]] = {"t": [], "rps": [], "error_rate": [], "p50_ms": [], "p99_ms": []}
            for t, point in steps:
                self._append(line, t, point.get(key))
            out[key] = line
        return out

    def _append(self, line: dict[str, list[Any]], t: float, vector: Vector | None) -> None:
        vector = vector or []
        requests = vector[0] if vector else 0.0
        errors = vector[1] if len(vector) > 1 else 0.0
        buckets = vector[2:]
        line["t"].append(t)
        line["rps"].append(round(requests / self.step_s, 3))
        line["error_rate"].append(round(errors / requests, 4) if requests > 0 else 0.0)
        for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
            seconds = quantile(q, self.bounds_s, buckets)
            line[name].append(None if seconds is None else round(seconds * 1000, 3))


def quantile(q: float, bounds_s: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """The ``q`` quantile of a histogram of cumulative bucket counts (as Prometheus's
    ``histogram_quantile``: linear within the bucket; the highest finite bound for the ``+Inf`` one).
    None for an empty histogram or one whose buckets don't match ``bounds_s`` (plus ``+Inf``)."""
    if len(cumulative) != len(bounds_s) + 1 or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds_s, cumulative, strict=False):
        if count >= rank:
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return bounds_s[-1] if bounds_s else None
