"""An edge master's split of live traffic between a model's stable and canary versions, and its count.

The cloud sends a :class:`~fogline.core.lifecycle.plan.ModelPlan` per model; the edge sends
``canary_share`` of the requests that name no version to the canary, and counts what each version
did over the current step's window (requests, failures that are not the client's, p99 latency,
mirrored answers compared with stable, cascade escalations). Every second the counts go back up as a
:class:`~fogline.core.lifecycle.plan.RolloutReport`, and the cloud decides whether to go on.

This sits on the per-request path, so the work there is small: a model without a plan costs one
dict lookup, the :class:`Choice` objects are made once per plan, and recording a request is O(1)
(its latency goes into a bounded ring buffer per version; the p99 is only computed when reported)::

    traffic = VersionTraffic()
    traffic.apply(plans)                                   # on every model sync from the cloud
    choice = traffic.choose("mlp", canary_ready=True)      # None: route as without rollouts
    traffic.record("mlp", choice.version, ok=True, latency_s=0.004)
    reports = traffic.reports(lambda model, canary: (devices, ready))

A new window starts when a model's ``(rollout_id, step, state)`` changes: the stats of one step never
mix with the next one's. Single-threaded by design (the edge's event loop): no locks.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from fogline.core.lifecycle.plan import PAUSED, ROLLOUT_STATES, RUNNING, ModelPlan, RolloutReport, VersionStats
from fogline.errors import InvalidInputError, echo_name

_ACTIVE_STATES = frozenset({RUNNING, PAUSED})
_NO_ERRORS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Choice:
    """Where one request that names no version goes."""

    version: str
    """The version this request goes to."""
    canary: bool
    stable: str | None
    """The stable version: to retry a failed canary request on, and to mirror on (None on a first install)."""


class _Counts:
    """One version's counters over the window; the latencies (seconds) of its ok requests, the newest kept."""

    __slots__ = ("disagreed", "errors", "escalated", "judged", "latencies_s", "mirrored", "requests")

    def __init__(self, max_samples: int) -> None:
        self.requests = 0
        self.errors = 0
        self.mirrored = 0
        self.disagreed = 0
        self.judged = 0
        self.escalated = 0
        self.latencies_s: deque[float] = deque(maxlen=max_samples)

    def snapshot(self) -> VersionStats:
        return VersionStats(requests=self.requests, errors=self.errors, p99_ms=_p99_ms(self.latencies_s),
                            mirrored=self.mirrored, disagreed=self.disagreed, judged=self.judged,
                            escalated=self.escalated)


def _p99_ms(latencies_s: deque[float]) -> float:
    """The nearest-rank 99th percentile in milliseconds, 0 without samples."""
    if not latencies_s:
        return 0.0
    ordered = sorted(latencies_s)
    rank = (99 * len(ordered) + 99) // 100  # ceil(0.99 * n) in integers: no float rounding at the edges
    return ordered[rank - 1] * 1000.0


class _ModelTraffic:
    """A model's plan in force, the choices it makes, and its versions' counts since ``window_start``."""

    __slots__ = ("canary_choice", "counts", "plan", "stable_choice", "window_start")

    def __init__(self, plan: ModelPlan, window_start: float, counts: dict[str, _Counts]) -> None:
        self.plan = plan
        self.window_start = window_start
        self.counts = counts
        stable = plan.stable.version if plan.stable is not None else None
        self.stable_choice = Choice(stable, canary=False, stable=stable) if stable is not None else None
        # NOTE: only a running or paused rollout has a canary to choose, mirror on and report.
        self.canary_choice = (Choice(plan.canary.version, canary=True, stable=stable)
                              if plan.state in _ACTIVE_STATES and plan.canary is not None else None)

    @property
    def canary_counts(self) -> _Counts | None:
        return self.counts.get(self.canary_choice.version) if self.canary_choice is not None else None


class VersionTraffic:
    """The plans in force at an edge master, the stable/canary choice per request, and each version's stats."""

    def __init__(self, *, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 max_samples: int = 4096) -> None:
        if max_samples < 1:
            raise InvalidInputError(f"max_samples must be at least 1 (latencies kept per version for the p99), "
                                    f"got {max_samples}")
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._max_samples = max_samples
        self._models: dict[str, _ModelTraffic] = {}

    def apply(self, plans: Sequence[ModelPlan]) -> None:
        """Put ``plans`` in force, replacing all. A model whose ``(rollout_id, step, state)`` changed starts
        a new window; an identical one keeps its counts. Models no longer planned are dropped."""
        _check(plans)
        now = self._clock()
        models: dict[str, _ModelTraffic] = {}
        for plan in plans:
            old = self._models.get(plan.name)
            if old is not None and _window_key(old.plan) == _window_key(plan):
                counts = {v: old.counts.get(v) or _Counts(self._max_samples) for v in plan.versions()}
                models[plan.name] = _ModelTraffic(plan, old.window_start, counts)
            else:
                counts = {v: _Counts(self._max_samples) for v in plan.versions()}
                models[plan.name] = _ModelTraffic(plan, now, counts)
        self._models = models

    def plan(self, model: str) -> ModelPlan | None:
        """The plan in force for ``model``, None without one."""
        traffic = self._models.get(model)
        return traffic.plan if traffic is not None else None

    def choose(self, model: str, *, canary_ready: bool = True) -> Choice | None:
        """Where a request for ``model`` that names no version goes; None without a plan (route as
        without rollouts). While a rollout runs or pauses, the canary gets ``canary_share`` of them if
        ``canary_ready`` (a device has it loaded), else all go to stable. On a first install (no stable
        version) the canary gets all of them when ready, and None comes back otherwise."""
        traffic = self._models.get(model)
        if traffic is None:
            return None
        canary = traffic.canary_choice
        if canary is None:
            return traffic.stable_choice
        if not canary_ready:
            return traffic.stable_choice
        if traffic.stable_choice is None:
            return canary
        share = traffic.plan.canary_share
        if share >= 1.0 or (share > 0.0 and self._rng.random() < share):
            return canary
        return traffic.stable_choice

    def record(self, model: str, version: str, *, ok: bool, latency_s: float) -> None:
        """Count one request answered by ``version``. ``ok=False``: a failure that is not the client's
        (its latency is not kept). Versions outside the model's plan are ignored."""
        traffic = self._models.get(model)
        if traffic is None:
            return
        counts = traffic.counts.get(version)
        if counts is None:
            return
        counts.requests += 1
        if ok:
            counts.latencies_s.append(latency_s)
        else:
            counts.errors += 1

    def should_mirror(self, model: str) -> bool:
        """Whether to also run this canary request on the stable version (``shadow_share`` of them);
        False without a running or paused plan that has both a canary and a stable version."""
        traffic = self._models.get(model)
        if traffic is None or traffic.canary_choice is None or traffic.stable_choice is None:
            return False
        share = traffic.plan.shadow_share
        return share > 0.0 and self._rng.random() < share

    def record_mirror(self, model: str, *, agreed: bool) -> None:
        """Count a mirrored canary request on the canary's stats, and whether stable gave the same answer."""
        traffic = self._models.get(model)
        counts = traffic.canary_counts if traffic is not None else None
        if counts is None:
            return
        counts.mirrored += 1
        if not agreed:
            counts.disagreed += 1

    def record_judged(self, model: str, version: str, *, escalated: bool) -> None:
        """Count a cascade answer of ``version`` judged on the device, and whether it went to the cloud."""
        traffic = self._models.get(model)
        counts = traffic.counts.get(version) if traffic is not None else None
        if counts is None:
            return
        counts.judged += 1
        if escalated:
            counts.escalated += 1

    def stats(self, model: str, version: str) -> VersionStats:
        """``version``'s stats over the current window (zeros for a model or version not planned)."""
        traffic = self._models.get(model)
        counts = traffic.counts.get(version) if traffic is not None else None
        return counts.snapshot() if counts is not None else VersionStats()

    def report(self, model: str, *, devices: int, devices_ready: int, install_error: str = "") -> RolloutReport | None:
        """The report of ``model``'s rollout for the cloud; None without a running or paused plan with a canary."""
        traffic = self._models.get(model)
        if traffic is None or traffic.canary_choice is None:
            return None
        plan = traffic.plan
        stable = traffic.stable_choice
        return RolloutReport(
            name=plan.name, rollout_id=plan.rollout_id, step=plan.step,
            devices=devices, devices_ready=devices_ready,
            canary=self.stats(model, traffic.canary_choice.version),
            stable=self.stats(model, stable.version) if stable is not None else VersionStats(),
            window_s=self._clock() - traffic.window_start,
            install_error=install_error,
        )

    def reports(self, devices_of: Callable[[str, str], tuple[int, int]],
                install_errors: Mapping[str, str] = _NO_ERRORS) -> list[RolloutReport]:
        """One report per model with a running or paused rollout; ``devices_of(model, canary_version)``
        gives ``(devices, devices_ready)``, ``install_errors`` a model's install failure, if any."""
        reports = []
        for model, traffic in self._models.items():
            if traffic.canary_choice is None:
                continue
            devices, ready = devices_of(model, traffic.canary_choice.version)
            report = self.report(model, devices=devices, devices_ready=ready,
                                 install_error=install_errors.get(model, ""))
            if report is not None:
                reports.append(report)
        return reports

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model: its plan and each version's stats, as plain values (for ``/v1/status``)."""
        now = self._clock()
        return {model: _status_of(traffic, now) for model, traffic in self._models.items()}


def _status_of(traffic: _ModelTraffic, now: float) -> dict[str, Any]:
    plan = traffic.plan
    versions: dict[str, dict[str, Any]] = {}
    for version, counts in traffic.counts.items():
        stats = counts.snapshot()
        versions[version] = {**asdict(stats), "error_rate": stats.error_rate}
    return {
        "plan": {
            "rollout_id": plan.rollout_id, "step": plan.step, "state": plan.state, "share": plan.canary_share,
            "stable": plan.stable.version if plan.stable is not None else None,
            "canary": plan.canary.version if plan.canary is not None else None,
        },
        "window_s": now - traffic.window_start,
        "versions": versions,
    }


def _window_key(plan: ModelPlan) -> tuple[str, int, str]:
    return plan.rollout_id, plan.step, plan.state


def _check(plans: Sequence[ModelPlan]) -> None:
    """Reject plans that cannot be put in force, before any is (``apply`` is all or nothing)."""
    seen: set[str] = set()
    for plan in plans:
        if plan.name in seen:
            raise InvalidInputError(f"two plans for model {echo_name(plan.name)}: send one plan per model")
        seen.add(plan.name)
        if plan.state not in ROLLOUT_STATES:
            raise InvalidInputError(f"plan for model {echo_name(plan.name)} has state {echo_name(plan.state)}; "
                                    f"expected one of {', '.join(ROLLOUT_STATES)}")
        if not 0.0 <= plan.canary_share <= 1.0 or not 0.0 <= plan.shadow_share <= 1.0:
            raise InvalidInputError(f"plan for model {echo_name(plan.name)} has canary_share {plan.canary_share} "
                                    f"and shadow_share {plan.shadow_share}; both must be within 0..1")
