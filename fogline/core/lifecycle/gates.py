"""The gates of a staged rollout: is the canary's live traffic as good as the stable version's?

Each edge master reports, for the current step's window, one :class:`VersionStats` for the canary
and one for the stable version of the same region. :func:`evaluate` compares them gate by gate:

- ``error_rate``: the canary's error rate may exceed stable's by ``max_error_rate_increase``;
- ``p99_ratio``: the canary's p99 may be ``max_p99_ratio`` times stable's (both floored at
  ``p99_floor_ms``: sub-millisecond noise on a shared CPU is no regression);
- ``disagreement``: the share of mirrored canary requests whose argmax differed from stable's;
- ``escalation_rate``: a cascade's device model may escalate ``max_escalation_increase`` more of
  its answers to the cloud than stable does.

A gate says ``ok=None`` until it has enough samples to judge, so ten requests never fail or pass a
rollout by chance. The one exception is a canary whose errors alone decide the outcome: when the
error gate would fail even if every request up to ``min_requests`` succeeded, it fails at once::

    results = evaluate(report.canary, report.stable, GateSettings())
    failed = first_failure(results)       # None: nothing failed (some may still be judging)

Pure values and arithmetic: the rollout controller (``rollout.py``) decides what a result means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from fogline.core.lifecycle.plan import VersionStats
from fogline.errors import InvalidInputError

ERROR_RATE = "error_rate"
P99_RATIO = "p99_ratio"
DISAGREEMENT = "disagreement"
ESCALATION_RATE = "escalation_rate"
INSTALL = "install"

NOT_APPLICABLE = frozenset({DISAGREEMENT, ESCALATION_RATE})
"""Gates that may never be judged without holding a rollout: a model that is no classifier has no
argmax to compare, one that is no cascade's device model escalates nothing."""


class GateSettingsError(InvalidInputError, ValueError):
    """Gate settings that cannot be used: the caller's to fix (INVALID_ARGUMENT, and a ValueError)."""


_SHARES = ("max_error_rate_increase", "max_disagreement", "max_escalation_increase", "shadow_share")
_COUNTS = ("min_requests", "min_mirrored", "min_judged")


@dataclass(frozen=True, kw_only=True)
class GateSettings:
    """The limits a canary must stay within, and how many samples it takes to judge."""

    max_error_rate_increase: float = 0.01
    """The canary's error rate minus stable's (0.01: one percentage point)."""
    max_p99_ratio: float = 2.0
    """The canary's p99 over stable's."""
    p99_floor_ms: float = 5.0
    """A p99 below this counts as this (sub-millisecond noise on shared CPUs)."""
    max_disagreement: float = 0.05
    """The share of mirrored requests whose argmax differed."""
    max_escalation_increase: float = 0.05
    """The canary's escalation rate minus stable's (a cascade's device model)."""
    min_requests: int = 20
    """Canary requests (and stable ones, for the p99 ratio) before the error and p99 gates judge."""
    min_mirrored: int = 10
    """Mirrored canary requests before the disagreement gate judges."""
    min_judged: int = 20
    """Judged cascade answers of each version before the escalation gate judges."""
    shadow_share: float = 0.2
    """Passed to the edges: the share of canary requests also run on stable to compare answers."""

    def __post_init__(self) -> None:
        for name in _SHARES:
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise GateSettingsError(f"gate setting {name} must be a number within 0..1, got {value!r}")
        if not _is_number(self.max_p99_ratio) or not 1.0 <= self.max_p99_ratio < math.inf:
            raise GateSettingsError(f"gate setting max_p99_ratio must be a finite number of at least 1 "
                                    f"(the canary's p99 over stable's), got {self.max_p99_ratio!r}")
        if not _is_number(self.p99_floor_ms) or not 0.0 <= self.p99_floor_ms < math.inf:
            raise GateSettingsError(f"gate setting p99_floor_ms must be a finite number of at least 0, "
                                    f"got {self.p99_floor_ms!r}")
        for name in _COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GateSettingsError(f"gate setting {name} must be a whole number of at least 1, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        """The settings as plain values (the store, the status API)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateSettings:
        """Settings from plain values; a key left out keeps its default, an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GateSettingsError(f"unknown gate settings {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict on a window of traffic."""

    name: str
    """error_rate, p99_ratio, disagreement, escalation_rate or install."""
    ok: bool | None
    """None: not enough samples to judge yet (or the gate does not apply)."""
    value: float
    limit: float
    detail: str
    """What the operator reads: the numbers and the limit, or how many samples so far."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(canary: VersionStats, stable: VersionStats, settings: GateSettings) -> list[GateResult]:
    """Every gate's verdict on ``canary`` against ``stable`` (same window, same region)."""
    return [_error_rate(canary, stable, settings), _p99_ratio(canary, stable, settings),
            _disagreement(canary, settings), _escalation_rate(canary, stable, settings)]


def first_failure(results: Iterable[GateResult]) -> GateResult | None:
    """The first result that failed, None if none did."""
    return next((r for r in results if r.ok is False), None)


def install_result(*, devices: int, devices_ready: int, install_error: str, version: str) -> GateResult:
    """Whether the canary is installed on every device of a region: failed with ``install_error``,
    passed once all ``devices`` have it loaded, not yet otherwise."""
    if install_error:
        return GateResult(INSTALL, False, devices_ready, devices, install_error)
    if devices <= 0:
        return GateResult(INSTALL, None, 0, 0, "no device of the region holds the model")
    ok = True if devices_ready >= devices else None
    return GateResult(INSTALL, ok, devices_ready, devices,
                      f"{devices_ready} of {devices} devices have version {version} loaded")


def _error_rate(canary: VersionStats, stable: VersionStats, s: GateSettings) -> GateResult:
    limit = s.max_error_rate_increase
    if canary.requests >= s.min_requests:
        value = canary.error_rate - stable.error_rate
        return GateResult(ERROR_RATE, value <= limit, value, limit,
                          f"canary error rate {_pct(canary.error_rate)} ({canary.errors} of {canary.requests}) "
                          f"is {_diff(value)} the stable {_pct(stable.error_rate)} "
                          f"(limit {_points(limit)})")
    # NOTE: the best the canary can still do is every request up to min_requests succeeding.
    best = canary.errors / s.min_requests - stable.error_rate
    if best > limit:
        return GateResult(ERROR_RATE, False, best, limit,
                          f"{canary.errors} errors in the first {canary.requests} canary requests: at least "
                          f"{_pct(canary.errors / s.min_requests)} of {s.min_requests} even if the rest succeed, "
                          f"{_diff(best)} the stable {_pct(stable.error_rate)} (limit {_points(limit)})")
    return GateResult(ERROR_RATE, None, 0.0, limit, f"{canary.requests} of {s.min_requests} canary requests so far")


def _p99_ratio(canary: VersionStats, stable: VersionStats, s: GateSettings) -> GateResult:
    limit = s.max_p99_ratio
    if canary.requests < s.min_requests or stable.requests < s.min_requests:
        return GateResult(P99_RATIO, None, 0.0, limit,
                          f"{canary.requests} of {s.min_requests} canary requests and "
                          f"{stable.requests} of {s.min_requests} stable requests so far")
    canary_ms, stable_ms = max(canary.p99_ms, s.p99_floor_ms), max(stable.p99_ms, s.p99_floor_ms)
    value = canary_ms / stable_ms if stable_ms > 0 else (1.0 if canary_ms == 0 else math.inf)
    floored = canary.p99_ms < s.p99_floor_ms or stable.p99_ms < s.p99_floor_ms
    note = f"; p99s under {s.p99_floor_ms:g} ms count as {s.p99_floor_ms:g} ms" if floored else ""
    return GateResult(P99_RATIO, value <= limit, value, limit,
                      f"canary p99 {canary_ms:.1f} ms is {value:.1f}x the stable {stable_ms:.1f} ms "
                      f"(limit {limit:g}x{note})")


def _disagreement(canary: VersionStats, s: GateSettings) -> GateResult:
    limit = s.max_disagreement
    if canary.mirrored >= s.min_mirrored:
        value = canary.disagreed / canary.mirrored
        return GateResult(DISAGREEMENT, value <= limit, value, limit,
                          f"{canary.disagreed} of {canary.mirrored} mirrored answers ({_pct(value)}) differed "
                          f"from stable's (limit {_pct(limit)})")
    if canary.mirrored == 0 and canary.requests >= s.min_requests:
        return GateResult(DISAGREEMENT, None, 0.0, limit, "no mirrored answers (not a classifier, or shadowing off)")
    return GateResult(DISAGREEMENT, None, 0.0, limit, f"{canary.mirrored} of {s.min_mirrored} mirrored answers so far")


def _escalation_rate(canary: VersionStats, stable: VersionStats, s: GateSettings) -> GateResult:
    limit = s.max_escalation_increase
    if canary.judged == 0 and stable.judged == 0:
        return GateResult(ESCALATION_RATE, None, 0.0, limit, "nothing judged: not a cascade's device model")
    if canary.judged < s.min_judged or stable.judged < s.min_judged:
        return GateResult(ESCALATION_RATE, None, 0.0, limit,
                          f"{canary.judged} of {s.min_judged} canary and {stable.judged} of {s.min_judged} "
                          f"stable answers judged so far")
    canary_rate, stable_rate = canary.escalated / canary.judged, stable.escalated / stable.judged
    value = canary_rate - stable_rate
    return GateResult(ESCALATION_RATE, value <= limit, value, limit,
                      f"canary escalated {_pct(canary_rate)} ({canary.escalated} of {canary.judged}), "
                      f"{_diff(value)} the stable {_pct(stable_rate)} (limit {_points(limit)})")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def _points(share: float) -> str:
    return f"{share * 100:.1f} points"


def _diff(increase: float) -> str:
    return f"{_points(increase)} above" if increase >= 0 else f"{_points(-increase)} below"
