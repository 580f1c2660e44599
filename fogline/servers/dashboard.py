"""A master's live dashboard: what it samples once a second, what it keeps, and the documents it serves.

Each tick (aligned to the wall-clock second) a :class:`Dashboard` reads its own process's metrics and its
peers' ``/metrics`` (an edge: its device nodes; the cloud: its GPU workers), and the cloud also reads each
edge master's region document (``GET /v1/dashboard/region``: the region's traffic points, its nodes and
events). Deltas of the totals go into a :class:`~fogline.core.observe.history.TrafficHistory` (15 minutes
at one point a second), membership, circuits and rollouts into an
:class:`~fogline.core.observe.events.EventLog`. Nothing here is on a request's path.

- ``GET /v1/dashboard?since=T``: the page's document (``docs/observability.md``): nodes, series, routes,
  escalation, events and rollouts; with ``since`` only what came after the previous answer's ``now``.
  Series points are served ``settle_s`` late, once late regional data for them has arrived.
- ``GET /v1/dashboard/region?since=T``: an edge's region for the cloud master (points as vectors).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fogline.adapters.http.peers import PeerReader
from fogline.adapters.metrics import LATENCY_BUCKETS_S, Metrics
from fogline.adapters.scrape import Reading, read_registry, read_text
from fogline.core.control.registry import Load, MemberState, versions_by_model
from fogline.core.observe.events import BREAKER, GATE, HEALTH, ROLLOUT, START, ChangeWatch, EventLog, MembershipWatch
from fogline.core.observe.history import WINDOW_S, Deltas, Key, TrafficHistory
from fogline.core.observe.region import checked_region
from fogline.core.routing.pool import Endpoint
from fogline.core.tasks import stop_task
from fogline.errors import InvalidInputError, truncate

log = logging.getLogger(__name__)

TRAFFIC, ROUTE = "traffic", "route"
HEALTHY, UNHEALTHY, DOWN, UNKNOWN = "healthy", "unhealthy", "down", "unknown"
ESCALATION_WINDOW_S = 60.0
"""Routes and escalation rates are counted over this much of the recent past."""
_CASCADE_EASY, _CASCADE_HARD = "cascade-easy", "cascade-hard"


@dataclass(frozen=True, kw_only=True)
class DashboardSettings:
    """How a master samples its dashboard."""

    sample_s: float = 1.0
    """One point every this often (0: no dashboard sampling; the page then shows no traffic)."""
    window_s: float = WINDOW_S
    """How much history is kept."""
    settle_s: float = 3.0
    """Series points are served once this old, so that regions' points for them have arrived."""
    ghost_s: float = 120.0
    """A member that left stays on the page, down, this long."""
    peer_timeout_s: float = 0.8
    """How long one read of a peer may take."""


@dataclass(frozen=True)
class Peer:
    """A process whose REST pages a dashboard reads: its id, its tier, where, and its certificate's name."""

    id: str
    tier: str
    http_address: str
    server_name: str | None = None


@dataclass
class FleetView:
    """What a master tells its dashboard each tick (see :class:`Dashboard`)."""

    nodes: list[dict[str, Any]]
    """The nodes it knows now, in the page's shape (``node()``), itself first."""
    scraped: list[Peer]
    """Peers whose ``/metrics`` are read (their traffic, under their tier; their health)."""
    regions: list[Peer]
    """Edge masters whose region documents are read (the cloud master's)."""
    rollouts: list[dict[str, Any]]
    """Rollout statuses (``RolloutController.status_json``)."""


def node(id: str, kind: str, parent: str | None, *, region: str | None = None, health: str = HEALTHY,
         circuit: str | None = None, load: Load | None = None,
         versions: Mapping[str, list[str]] | None = None, address: str = "") -> dict[str, Any]:
    """One node of the page's topology."""
    load = load or Load()
    return {"id": id, "kind": kind, "parent": parent, "region": region, "health": health, "circuit": circuit,
            "load": {"in_flight": load.in_flight, "queue_depth": load.queue_depth}, "versions": dict(versions or {}),
            "address": address}


def member_node(state: MemberState, endpoint: Endpoint[Any] | None, ejected: set[str], *,
                parent: str, routed: bool = True) -> dict[str, Any]:
    """A member on the dashboard: healthy once it passed its health check and, if this master ``routed``
    to it, is in routing; its circuit as this master's breaker for it says (``ejected`` when ejection keeps
    it out; None: not routed to). Whether it answers is the dashboard's to add."""
    m = state.member
    circuit = None if endpoint is None else "ejected" if m.id in ejected else endpoint.breaker.state.value
    healthy = state.checked and (endpoint is not None or not routed)
    return node(m.id, m.service, parent, region=m.region or None, health=HEALTHY if healthy else UNHEALTHY,
                circuit=circuit, versions=versions_by_model(m) or {n: [] for n in sorted(m.models)},
                address=m.address, load=state.load)


class Dashboard:
    """The dashboard of one master (``scope`` ``cloud`` or ``edge``, of ``tier`` ``cloud`` or ``edge``);
    ``view`` is asked each tick what the fleet looks like."""

    def __init__(self, metrics: Metrics, view: Callable[[], FleetView], *, scope: str, id: str,
                 region: str | None = None, settings: DashboardSettings = DashboardSettings(),
                 reader: PeerReader | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.scope, self.id, self.region = scope, id, region
        self._metrics = metrics
        self._view = view
        self._reader = reader or PeerReader(timeout_s=settings.peer_timeout_s)
        self._clock = clock
        self.history = TrafficHistory(bounds_s=LATENCY_BUCKETS_S, window_s=settings.window_s,
                                      step_s=settings.sample_s or 1.0)
        self.events = EventLog(clock=clock)
        self._deltas = Deltas()
        self._sources: set[tuple[str, str]] = set()
        self._baseline: set[tuple[str, str]] = set()
        self._members = MembershipWatch(self.events, ghost_s=settings.ghost_s)
        self._circuits = ChangeWatch(self.events, BREAKER, _circuit_event)
        self._reachable = ChangeWatch(self.events, HEALTH, self._reach_event)
        self._ever_healthy: set[str] = set()
        self._rollout_seen: dict[str, int] = {}
        self._nodes: list[dict[str, Any]] = []
        self._last_seen: dict[str, dict[str, Any]] = {}
        """Each member's node as last seen, kept while it may be shown as down (``ghost_s``)."""
        self._rollouts: list[dict[str, Any]] = []
        self._region_since: dict[str, float] = {}
        self._region_events: dict[str, float] = {}
        self._started = clock()
        self._last_tick: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling (nothing with ``sample_s`` 0)."""
        self.events.add(START, self.id, f"{self.scope} master {self.id} started")
        if self.settings.sample_s > 0:
            self._task = asyncio.create_task(self._loop(), name="dashboard")

    async def stop(self) -> None:
        """Stop sampling and close the peers' session."""
        await stop_task(self._task)
        await self._reader.close()

    async def _loop(self) -> None:
        step = self.settings.sample_s
        while True:
            now = self._clock()
            await asyncio.sleep(step - now % step + 0.02)  # NOTE: just after the second: one point per slot
            try:
                await self.tick()
            except Exception:  # a dashboard must never take its master down
                log.exception("dashboard sampling failed; trying again next second")

    async def tick(self) -> None:
        """Sample once: own metrics, peers' metrics and regions; nodes, events, rollouts."""
        view = self._view()
        readings = await asyncio.gather(*(self._scrape(p) for p in view.scraped))
        regions = await asyncio.gather(*(self._region(p) for p in view.regions))
        now = self._clock()
        if self._last_tick is None:  # the first tick: what those read now have done is the past, not traffic
            self._baseline = {(p.id, p.tier) for p, r in zip(view.scraped, readings, strict=True) if r is not None}
        slot_t = self._last_tick if self._last_tick is not None else now - self.history.step_s
        self._last_tick = now
        self._add_reading(slot_t, (self.id, self.scope), self.scope, read_registry(self._metrics.registry))
        started: dict[str, float | None] = {}
        health: dict[str, str] = {}
        for peer, reading in zip(view.scraped, readings, strict=True):
            health[peer.id] = HEALTHY if reading is not None else UNHEALTHY
            if reading is not None:
                started[peer.id] = reading.started_s
                self._add_reading(slot_t, (peer.id, peer.tier), peer.tier, reading)
        own = {n["id"] for n in view.nodes}
        region_nodes = [n for peer, doc in zip(view.regions, regions, strict=True)
                        for n in self._merge_region(peer, doc, health, own)]
        sources = {(self.id, self.scope), *((p.id, p.tier) for p in view.scraped)}
        self._deltas.forget(sources)
        self._sources &= sources
        self._update_nodes(now, view.nodes, region_nodes, health, started)
        self._update_rollouts(view.rollouts)
        self.history.trim(now)

    async def _scrape(self, peer: Peer) -> Reading | None:
        text = await self._reader.text(peer.http_address, "/metrics", peer.server_name)
        if text is None:
            return None
        try:
            return read_text(text)
        except (ValueError, TypeError, IndexError):
            return None

    async def _region(self, peer: Peer) -> dict[str, Any] | None:
        since = self._region_since.get(peer.id)
        path = "/v1/dashboard/region" + ("" if since is None else f"?since={since!r}")
        doc = await self._reader.json(peer.http_address, path, peer.server_name)
        return doc if isinstance(doc, dict) else None

    def _add_reading(self, t: float, source: tuple[str, str], tier: str, reading: Reading) -> None:
        # NOTE: a series new to us is all recent traffic when its source was read before, is this process, or
        # was not read at the first tick (a member that joined since); otherwise its past is not this second's.
        new = source in self._sources or source == (self.id, self.scope) or source not in self._baseline
        self._sources.add(source)
        for model, totals in reading.traffic.items():
            delta = self._deltas.delta((source, TRAFFIC, model), totals, new=new)
            self.history.add(t, (TRAFFIC, tier, model), delta)
        for (model, route), total in reading.routes.items():
            delta = self._deltas.delta((source, ROUTE, model, route), [total], new=new)
            self.history.add(t, (ROUTE, model, route), delta)

    def _merge_region(self, peer: Peer, doc: dict[str, Any] | None, health: dict[str, str],
                      own: set[str]) -> list[dict[str, Any]]:
        """Take an edge's region document into this history and log; the region's nodes (checked). Its
        events about this master's own members (``own``: what the edge saw of the workers) are left out."""
        if doc is None:
            health[peer.id] = UNHEALTHY
            return []
        try:
            region = checked_region(doc)
        except InvalidInputError:
            health[peer.id] = UNHEALTHY
            return []
        health[peer.id] = HEALTHY if region.ready else UNHEALTHY
        for t, key, vector in region.points:
            self.history.add(t, key, vector)
            self._region_since[peer.id] = max(self._region_since.get(peer.id, t), t)
        seen = self._region_events.get(peer.id, self._started)
        for event in region.events:
            if event["t"] > seen:
                self._region_events[peer.id] = event["t"]
                if event["node"] not in own or event["kind"] == START:
                    self.events.add(event["kind"], event["node"], event["text"])
        # NOTE: the edge's own node is this master's view of it, and the workers are this master's own.
        return [{**n, "parent": n["parent"] or peer.id} for n in region.nodes
                if n["id"] != peer.id and n["kind"] == "device"]

    def _update_nodes(self, now: float, own: list[dict[str, Any]], regional: list[dict[str, Any]],
                      health: dict[str, str], started: dict[str, float | None]) -> None:
        """The page's nodes: this master's own (their joins, leaves, restarts and circuits watched here),
        the regions' (watched by their edges), and the own members that left within ``ghost_s``."""
        nodes = own + regional
        for n in own:
            if n["id"] in health and n["health"] == HEALTHY:
                n["health"] = health[n["id"]]
        for region in [n for n in own if n["kind"] == "region"]:
            edges = [n["health"] for n in own if n["kind"] == "edge" and n["parent"] == region["id"]]
            region["health"] = HEALTHY if HEALTHY in edges else UNHEALTHY
        present = {n["id"]: started.get(n["id"]) for n in own if n["kind"] not in ("cloud", "region")}
        present.pop(self.id, None)
        self._members.observe(now, present)
        self._circuits.observe({n["id"]: n["circuit"] for n in own if n["circuit"] is not None})
        self._reachable.observe({n["id"]: n["health"] for n in own if n["id"] in health})
        self._ever_healthy |= {n["id"] for n in own if n["health"] == HEALTHY}
        departed = self._members.departed(now)
        self._last_seen = {mid: n for mid, n in self._last_seen.items() if mid in departed}
        ghosts = [{**n, "health": DOWN, "circuit": None, "load": {"in_flight": 0, "queue_depth": 0}}
                  for n in self._last_seen.values()]
        self._last_seen.update({n["id"]: n for n in own if n["id"] in present})
        self._nodes = nodes + ghosts

    def _update_rollouts(self, rollouts: list[dict[str, Any]]) -> None:
        self._rollouts = [_rollout_summary(r) for r in rollouts]
        for r in rollouts:
            key = f"{r.get('model')}:{r.get('id')}"
            history = r.get("history") or []
            for entry in history[self._rollout_seen.get(key, 0):]:
                if _iso_seconds(entry.get("at")) >= self._started - 1:  # not what happened before this process
                    self.events.add(GATE if entry.get("event") == "rolled_back" else ROLLOUT,
                                    str(r.get("model")), _rollout_text(r, entry))
            self._rollout_seen[key] = len(history)

    def _reach_event(self, key: Hashable, before: Any, after: Any) -> tuple[str, str] | None:
        """A member that stopped answering, or answers again (not one coming up for the first time)."""
        if after == UNHEALTHY:
            return str(key), f"{key} stopped answering"
        if after == HEALTHY and before == UNHEALTHY and key in self._ever_healthy:
            return str(key), f"{key} answers again"
        return None

    # --- the documents ----------------------------------------------------------------------------

    async def document(self, since: str | None = None) -> dict[str, Any]:
        """The page's document (``GET /v1/dashboard``)."""
        after = _since(since)
        now = self._clock()
        settle = self.settings.settle_s
        series = self.history.series(None if after is None else after - settle, now - settle, kind=TRAFFIC)
        recent = self.history.totals(now - settle - ESCALATION_WINDOW_S, now - settle)
        return {"scope": self.scope, "id": self.id, "region": self.region, "now": now,
                "window_s": self.settings.window_s, "step_s": self.history.step_s, "nodes": self._nodes,
                "series": [{"tier": key[1], "model": key[2], **line} for key, line in sorted(series.items())],
                "routes": _routes(recent), "escalation": _escalation(recent),
                "events": [e.to_json() for e in self.events.since(after)], "rollouts": self._rollouts}

    async def region_document(self, since: str | None = None) -> dict[str, Any]:
        """An edge's region for the cloud master (``GET /v1/dashboard/region``): the points after
        ``since`` as vectors, its nodes, and its events of the last window."""
        after = _since(since)
        now = self._clock()
        points = [[t, list(key), vector] for t, point in self.history.points(after)
                  for key, vector in point.items()]
        events = [e.to_json() for e in self.events.since(now - self.settings.window_s)]
        ready = any(n["kind"] == "device" and n["health"] == HEALTHY for n in self._nodes)
        return {"id": self.id, "region": self.region, "now": now, "ready": ready,
                "points": points[-MAX_REGION_POINTS:], "nodes": self._nodes, "events": events}

    def status_routes(self) -> dict[str, Any]:
        """The REST routes of the dashboard's documents (the page itself is served by the REST adapter)."""
        return {"/v1/dashboard": self.document, "/v1/dashboard/region": self.region_document}


MAX_REGION_POINTS = 20_000
"""The most point entries one region document carries (a region with many models, after a long gap)."""


def _since(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        since = float(value)
    except ValueError:
        raise InvalidInputError(f"since must be a number of seconds (unix time), not {truncate(value, 40)!r}") from None
    if not math.isfinite(since):
        raise InvalidInputError("since must be a finite number of seconds (unix time)")
    return since


def _routes(recent: dict[Key, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, vector in recent.items():
        if key[0] == ROUTE:
            out[key[2]] = out.get(key[2], 0.0) + vector[0]
    return out


def _escalation(recent: dict[Key, list[float]]) -> list[dict[str, Any]]:
    by_model: dict[str, list[float]] = {}
    for key, vector in recent.items():
        if key[0] == ROUTE and key[2] in (_CASCADE_EASY, _CASCADE_HARD):
            counts = by_model.setdefault(key[1], [0.0, 0.0])
            counts[key[2] == _CASCADE_HARD] += vector[0]
    return [{"model": model, "rate": round(hard / (easy + hard), 4), "requests": easy + hard}
            for model, (easy, hard) in sorted(by_model.items()) if easy + hard > 0]


def _rollout_summary(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"model": r.get("model"), "version": r.get("version"), "state": r.get("state"),
            "percent": r.get("percent"), "step": r.get("step"), "steps": r.get("steps"),
            "reason": r.get("failure") or None, "waiting": r.get("waiting") or None}


def _rollout_text(rollout: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    detail = entry.get("detail") or ""
    text = f"{rollout.get('model')} v{rollout.get('version')}: {entry.get('event')} at {entry.get('percent')} %"
    return text + (f" ({detail})" if detail else "")


def _iso_seconds(value: Any) -> float:
    """Unix seconds of an ISO 8601 time (0 for anything else)."""
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0


def _circuit_event(key: Hashable, before: Any, after: Any) -> tuple[str, str] | None:
    return str(key), f"circuit of {key}: {before} -> {after}"


