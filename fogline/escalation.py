"""The edge master's escalation policy (DESIGN.md §2): where a request runs first, when a cascade's
device answer is too uncertain to keep, and how to pick a cascade's threshold on labelled
validation data.

Pure domain logic: no I/O, no protocol imports. Per request::

    decision = policy.decide(entry, hint=tier, device_state=state, cloud_reachable=reachable)
    # run decision.model on decision.tier, then, for a cascade:
    if decision.check_hardness:
        escalate, route = resolve_cascade(entry, probs, cloud_reachable=reachable)

``cloud_reachable`` takes a bool or a callable. A callable is called only where the answer changes
the outcome (``fogline.edge_router`` passes one that asks the GPU workers' circuit breakers).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, NoReturn

import numpy as np

from fogline.errors import InvalidInputError, OverloadedError, UnavailableError, echo_name
from fogline.types import (
    PARAM_TIER,
    ROUTE_CASCADE_EASY,
    ROUTE_CASCADE_HARD,
    ROUTE_DEGRADED,
    ROUTE_FAILOVER,
    ROUTE_HINT,
    ROUTE_OVERFLOW,
    ROUTE_PLACEMENT,
    TIER_AUTO,
    TIER_CLOUD,
    TIER_DEVICE,
    TIERS,
)

Criterion = Literal["max_prob", "entropy", "margin"]
CRITERIA: tuple[Criterion, ...] = ("max_prob", "entropy", "margin")
CloudReachable = bool | Callable[[], bool]

_SUM_TOLERANCE = 1e-3  # NOTE: float16/float32 softmax rows sum to 1 only approximately
_RULE_FIELDS: dict[Criterion, str] = {"max_prob": "max_prob_below", "entropy": "entropy_above",
                                      "margin": "margin_below"}
_HARD_BELOW: dict[Criterion, bool] = {"max_prob": True, "entropy": False, "margin": True}


# --- Hardness of a device answer -------------------------------------------------------------------

def _as_numbers(probs: np.ndarray) -> np.ndarray:
    """``probs`` as a float64 copy; InvalidInputError unless they are numbers of shape [N, K], K >= 2."""
    array = np.asarray(probs)
    if array.ndim != 2 or array.shape[1] < 2 or array.dtype.kind not in "fiu":
        raise InvalidInputError(f"hardness needs class probabilities, numbers of shape [N, K] with K >= 2; "
                                f"got {array.dtype} of shape {list(array.shape)}")
    return array.astype(np.float64)


def _check_distributions(values: np.ndarray) -> None:
    """InvalidInputError unless every row of ``values`` is a probability distribution."""
    sums = values.sum(axis=1)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1)
                         | (np.abs(sums - 1.0) > _SUM_TOLERANCE))
    if bad.size:
        row = int(bad[0])
        raise InvalidInputError(
            f"model output row {row} is not a probability distribution (smallest value {values[row].min():.4g}, "
            f"sum {sums[row]:.4g}): the cascade needs non-negative rows summing to 1. A model that outputs "
            f"logits must be configured to apply softmax first (or exported with a softmax output)")


def _as_probabilities(probs: np.ndarray) -> np.ndarray:
    """``probs`` as float64, unchanged otherwise; InvalidInputError unless they are class probabilities
    of shape [N, K]."""
    values = _as_numbers(probs)
    _check_distributions(values)
    return values


def _judged(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A device answer as float64 probabilities, and which of its rows cannot be judged: those holding a
    NaN or an infinity (what a model makes of NaN or inf inputs). They are set to the uniform row, what
    knowing nothing looks like, so that the others are checked and scored as usual."""
    values = _as_numbers(probs)
    unjudged = ~np.isfinite(values).all(axis=1)
    if unjudged.any():
        values[unjudged] = 1.0 / values.shape[1]
    _check_distributions(values)
    return values, unjudged


def _max_prob(p: np.ndarray) -> np.ndarray:
    return p.max(axis=1)


def _normalised_entropy(p: np.ndarray) -> np.ndarray:
    logs = np.log(np.where(p > 0, p, 1.0))  # 0 log 0 = 0
    return np.clip(-(p * logs).sum(axis=1) / math.log(p.shape[1]), 0.0, 1.0)


def _margin(p: np.ndarray) -> np.ndarray:
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


_SCORERS: dict[Criterion, Callable[[np.ndarray], np.ndarray]] = {
    "max_prob": _max_prob, "entropy": _normalised_entropy, "margin": _margin}


def _check_criterion(criterion: str) -> Criterion:
    for known in CRITERIA:
        if criterion == known:
            return known
    raise ValueError(f"criterion must be one of {', '.join(map(repr, CRITERIA))}; got {criterion!r}")


def scores(probs: np.ndarray, criterion: Criterion) -> np.ndarray:
    """Per row of [N, K] probabilities: the top probability (``max_prob``), the normalised entropy
    H / log K in [0, 1] (``entropy``), or the top-2 margin p1 - p2 (``margin``)."""
    return _SCORERS[_check_criterion(criterion)](_as_probabilities(probs))


def _check_threshold(name: str, threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"{name} must be a number, got {threshold!r}")
    if math.isnan(threshold) or (math.isfinite(threshold) and not 0.0 <= threshold <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1] (inf or -inf to mark every row hard or none), "
                         f"got {threshold}")


@dataclass(frozen=True, kw_only=True)
class HardnessRule:
    """When a cascade's device answer is *hard*: a row is hard if any configured criterion says so."""

    max_prob_below: float | None = None
    """Hard when the top class probability is below this."""
    entropy_above: float | None = None
    """Hard when the normalised entropy H / log K (0 certain, 1 uniform) is above this."""
    margin_below: float | None = None
    """Hard when the top-2 margin p1 - p2 is below this."""

    def __post_init__(self) -> None:
        if not self.thresholds():
            raise ValueError("a hardness rule needs at least one of max_prob_below, entropy_above, margin_below")
        for criterion, threshold in self.thresholds().items():
            _check_threshold(_RULE_FIELDS[criterion], threshold)

    @classmethod
    def for_criterion(cls, criterion: Criterion, threshold: float) -> HardnessRule:
        """The rule with one criterion, e.g. ``for_criterion("margin", 0.2)``."""
        return cls(**{_RULE_FIELDS[_check_criterion(criterion)]: threshold})

    def thresholds(self) -> dict[Criterion, float]:
        """The configured criteria and their thresholds."""
        values: dict[Criterion, float | None] = {
            "max_prob": self.max_prob_below, "entropy": self.entropy_above, "margin": self.margin_below}
        return {criterion: t for criterion, t in values.items() if t is not None}

    def is_hard(self, probs: np.ndarray) -> np.ndarray:
        """A bool per row of [N, K] probabilities; a row that cannot be judged (NaN or inf) is hard.
        InvalidInputError if the others are not probabilities."""
        values, unjudged = _judged(probs)
        return _hard_rows(self, values) | unjudged


def _hard_rows(rule: HardnessRule, p: np.ndarray) -> np.ndarray:
    hard = np.zeros(len(p), dtype=bool)
    for criterion, threshold in rule.thresholds().items():
        values = _SCORERS[criterion](p)
        hard |= values < threshold if _HARD_BELOW[criterion] else values > threshold
    return hard


# --- The catalog entry and the decision ------------------------------------------------------------

class Placement(enum.Enum):
    """Where a model can run (DESIGN.md §2, step 2)."""

    DEVICE = "device"
    """On device nodes; also in the cloud (overflow, failover) when the entry has a cloud_model."""
    CLOUD = "cloud"
    """Only on cloud GPU workers."""
    CASCADE = "cascade"
    """The small device_model first; the large cloud_model for the inputs the rule finds hard."""


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    """A model as clients name it, and the models that serve it on each tier."""

    name: str
    placement: Placement
    device_model: str | None = None
    """The model device nodes hold for it."""
    cloud_model: str | None = None
    """The model GPU workers hold for it."""
    rule: HardnessRule | None = None
    """For a cascade: which device answers go to the cloud model."""
    output: str | None = None
    """For a cascade: the device model's output holding class probabilities (None: its only output)."""

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(f"catalog entry {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        if not self.name:
            return "needs a name"
        if not isinstance(self.placement, Placement):
            return f"placement must be a Placement, e.g. Placement({self.placement!r}); got {self.placement!r}"
        cascade = self.placement is Placement.CASCADE
        if self.placement is Placement.CLOUD:
            if self.device_model:
                return "placement 'cloud' runs only in the cloud; drop device_model or use 'device' or 'cascade'"
        elif not self.device_model:
            return f"placement {self.placement.value!r} needs a device_model"
        if self.placement is not Placement.DEVICE and not self.cloud_model:
            return f"placement {self.placement.value!r} needs a cloud_model"
        if cascade and self.rule is None:
            return "placement 'cascade' needs a hardness rule"
        if not cascade and self.rule is not None:
            return "a hardness rule applies only to placement 'cascade'"
        if not cascade and self.output:
            return "output (the probabilities a cascade judges) applies only to placement 'cascade'"
        return None

    @property
    def tiers(self) -> tuple[str, ...]:
        """The tiers this model can run on, device first."""
        return tuple(tier for tier, model in ((TIER_DEVICE, self.device_model), (TIER_CLOUD, self.cloud_model))
                     if model)

    def model_on(self, tier: str) -> str:
        """The model that serves this entry on ``tier``; ValueError if it cannot run there."""
        model = self.device_model if tier == TIER_DEVICE else self.cloud_model if tier == TIER_CLOUD else None
        if not model:
            raise ValueError(f"model {self.name!r} does not run on tier {tier!r}")
        return model


@dataclass(frozen=True, kw_only=True)
class DeviceState:
    """The edge master's view now of the device nodes holding one model."""

    healthy: int
    """Device nodes holding the model whose circuit is closed and that are not ejected."""
    overloaded: int = 0
    """How many of the healthy ones are over their queue limit."""

    def __post_init__(self) -> None:
        if not 0 <= self.overloaded <= self.healthy:
            raise ValueError(f"need 0 <= overloaded <= healthy, got healthy={self.healthy} "
                             f"overloaded={self.overloaded}")

    @property
    def any_healthy(self) -> bool:
        return self.healthy > 0

    @property
    def all_overloaded(self) -> bool:
        return self.healthy > 0 and self.overloaded == self.healthy


@dataclass(frozen=True, kw_only=True)
class Decision:
    """Where to send a request first, and why."""

    tier: str
    """``device`` or ``cloud``."""
    model: str
    """The model to run on that tier."""
    route: str
    """The ``fogline.route`` label; for a cascade on a device, resolve_cascade gives the final one."""
    check_hardness: bool = False
    """A cascade: pass the device answer to resolve_cascade."""


class CascadeVerdict(NamedTuple):
    """What to do with a cascade's device answer: unpacks as ``escalate, route``."""

    escalate: bool
    """Send the input to the cloud model and return its answer."""
    route: str

    @property
    def degraded(self) -> bool:
        """The device answer is returned only because the cloud is unreachable (``fogline.degraded``)."""
        return self.route == ROUTE_DEGRADED


@dataclass(frozen=True, kw_only=True)
class PolicySettings:
    overload_retry_after_s: float = 0.5
    """Retry hint in the RESOURCE_EXHAUSTED error when every device holding the model is over its
    queue limit and the cloud cannot take the request."""


def _reachable(cloud_reachable: CloudReachable) -> bool:
    return cloud_reachable() if callable(cloud_reachable) else bool(cloud_reachable)


def _check_hint(entry: CatalogEntry, hint: str) -> None:
    if hint not in TIERS:
        raise InvalidInputError(f"parameter {PARAM_TIER!r} must be one of {', '.join(map(repr, TIERS))}; "
                                f"got {echo_name(hint) if isinstance(hint, str) else repr(hint)}")
    if hint != TIER_AUTO and hint not in entry.tiers:
        only = entry.tiers[0]
        raise InvalidInputError(f"model {entry.name!r} cannot run on the {hint} tier, only on the {only} tier; "
                                f"send {PARAM_TIER} 'auto' or {only!r}")


class EscalationPolicy:
    """The edge master's decision in DESIGN.md §2's order: hint, placement, device health, device load.
    Raises InvalidInputError for a bad hint, UnavailableError or OverloadedError when no tier can
    take the request."""

    def __init__(self, settings: PolicySettings = PolicySettings()) -> None:
        self.settings = settings

    def decide(self, entry: CatalogEntry, *, hint: str = TIER_AUTO, device_state: DeviceState,
               cloud_reachable: CloudReachable) -> Decision:
        """The first tier to try for a request to ``entry``. A device that then fails can be treated
        by deciding again with ``DeviceState(healthy=0)``."""
        _check_hint(entry, hint)
        if hint == TIER_DEVICE:
            return self._on_device(entry, device_state, ROUTE_HINT, f"and {PARAM_TIER} 'device' rules out the cloud")
        if hint == TIER_CLOUD:
            return _in_cloud(entry, ROUTE_HINT, cloud_reachable)
        if entry.placement is Placement.CLOUD:
            return _in_cloud(entry, ROUTE_PLACEMENT, cloud_reachable)
        if entry.cloud_model and not _device_can_take(device_state) and _reachable(cloud_reachable):
            route = ROUTE_OVERFLOW if device_state.any_healthy else ROUTE_FAILOVER
            return Decision(tier=TIER_CLOUD, model=entry.model_on(TIER_CLOUD), route=route)
        why = "and the cloud tier is unreachable" if entry.cloud_model else "and it has no cloud variant"
        return self._on_device(entry, device_state, ROUTE_PLACEMENT, why)

    def _on_device(self, entry: CatalogEntry, state: DeviceState, route: str, why_not_cloud: str) -> Decision:
        if not _device_can_take(state):
            self._refuse(entry, state, why_not_cloud)
        return Decision(tier=TIER_DEVICE, model=entry.model_on(TIER_DEVICE), route=route,
                        check_hardness=route == ROUTE_PLACEMENT and entry.placement is Placement.CASCADE)

    def _refuse(self, entry: CatalogEntry, state: DeviceState, why_not_cloud: str) -> NoReturn:
        if not state.any_healthy:
            raise UnavailableError(f"no healthy device node holds model {entry.name!r}, {why_not_cloud}")
        retry_s = self.settings.overload_retry_after_s
        raise OverloadedError(f"all {state.healthy} healthy device nodes holding model {entry.name!r} are over "
                              f"their queue limit, {why_not_cloud}; retry after {retry_s:g} s",
                              retry_after_s=retry_s)


def _device_can_take(state: DeviceState) -> bool:
    return state.any_healthy and not state.all_overloaded


def _in_cloud(entry: CatalogEntry, route: str, cloud_reachable: CloudReachable) -> Decision:
    if not _reachable(cloud_reachable):
        why = "it runs only in the cloud" if route == ROUTE_PLACEMENT else f"{PARAM_TIER} 'cloud' was asked for"
        raise UnavailableError(f"the cloud tier is unreachable; model {entry.name!r} cannot be served ({why})")
    return Decision(tier=TIER_CLOUD, model=entry.model_on(TIER_CLOUD), route=route)


def resolve_cascade(entry: CatalogEntry, device_probs: np.ndarray, cloud_reachable: CloudReachable) -> CascadeVerdict:
    """After a cascade's device answer: keep it (``cascade-easy``), escalate it (``cascade-hard``), or
    keep it flagged because the cloud is unreachable (``degraded``). A request is hard when any of
    its rows is, a row with a NaN or an infinity included, and then goes to the cloud whole, so that one
    response comes from one tier."""
    if entry.rule is None:
        raise ValueError(f"model {entry.name!r} is not a cascade (placement {entry.placement.value!r})")
    if not entry.rule.is_hard(device_probs).any():
        return CascadeVerdict(False, ROUTE_CASCADE_EASY)
    if _reachable(cloud_reachable):
        return CascadeVerdict(True, ROUTE_CASCADE_HARD)
    return CascadeVerdict(False, ROUTE_DEGRADED)


# --- Calibration on labelled validation data -------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class CascadeResult:
    """How a cascade does on labelled data: the device answer for easy rows, the cloud's for hard ones."""

    accuracy: float
    escalation_rate: float
    """Share of rows sent to the cloud model."""
    device_accuracy: float
    """The small model alone."""
    cloud_accuracy: float
    """The large model alone."""
    escalated: int
    total: int

    @property
    def escalates_everything(self) -> bool:
        """The cascade is no cheaper than the cloud model alone: consider placement 'cloud'."""
        return self.escalated == self.total


def _check_validation(small_probs: np.ndarray, large_probs: np.ndarray,
                      labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    small, large = _as_probabilities(small_probs), _as_probabilities(large_probs)
    labels = np.asarray(labels)
    if small.shape != large.shape or not len(small) or labels.shape != (len(small),) or labels.dtype.kind not in "iu":
        raise InvalidInputError(f"validation data needs small and large probabilities of one shape [N, K], N >= 1, "
                                f"and N integer labels; got {list(small.shape)}, {list(large.shape)} and "
                                f"{labels.dtype} labels of shape {list(labels.shape)}")
    return small, large, labels


def _evaluate(small: np.ndarray, large: np.ndarray, labels: np.ndarray, rule: HardnessRule) -> CascadeResult:
    hard = _hard_rows(rule, small)
    device_right = small.argmax(axis=1) == labels
    cloud_right = large.argmax(axis=1) == labels
    return CascadeResult(accuracy=float(np.where(hard, cloud_right, device_right).mean()),
                         escalation_rate=float(hard.mean()), device_accuracy=float(device_right.mean()),
                         cloud_accuracy=float(cloud_right.mean()), escalated=int(hard.sum()), total=len(hard))


def evaluate(small_probs: np.ndarray, large_probs: np.ndarray, labels: np.ndarray,
             rule: HardnessRule) -> CascadeResult:
    """The cascade's accuracy and escalation rate under ``rule`` on labelled validation data."""
    return _evaluate(*_check_validation(small_probs, large_probs, labels), rule)


def _cuts(values: np.ndarray, below: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct split of the rows by a threshold on ``values``: the row order (hardest first),
    and per split the number of hard rows (increasing, from 0 to N) and its threshold. Equal values
    are never split, so the rule reproduces each count exactly on these rows."""
    order = np.argsort(values if below else -values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.r_[starts, len(values)]
    thresholds = np.r_[ordered[starts], math.inf if below else -math.inf]
    return order, counts, thresholds


def threshold_for_rate(small_probs: np.ndarray, criterion: Criterion, target_rate: float) -> HardnessRule:
    """The rule on ``criterion`` whose escalation share on the validation rows is the largest not
    exceeding ``target_rate``. Needs no labels: only the small model's outputs."""
    if not 0.0 <= target_rate <= 1.0:
        raise ValueError(f"target_rate must lie in [0, 1], got {target_rate}")
    criterion = _check_criterion(criterion)
    values = scores(small_probs, criterion)
    if not len(values):
        raise InvalidInputError("threshold_for_rate needs at least one validation row")
    _, counts, thresholds = _cuts(values, _HARD_BELOW[criterion])
    best = np.flatnonzero(counts <= target_rate * len(values) + 1e-9)[-1]
    return HardnessRule.for_criterion(criterion, float(thresholds[best]))


def lowest_rate_within(small_probs: np.ndarray, large_probs: np.ndarray, labels: np.ndarray,
                       criterion: Criterion, max_accuracy_drop: float) -> tuple[HardnessRule, CascadeResult]:
    """The rule on ``criterion`` with the lowest escalation rate whose cascade accuracy is at most
    ``max_accuracy_drop`` (absolute, e.g. 0.005) below the cloud model's on the same rows. If only
    escalating everything gets there, that rule, flagged by ``result.escalates_everything``."""
    if not 0.0 <= max_accuracy_drop <= 1.0:
        raise ValueError(f"max_accuracy_drop must lie in [0, 1], got {max_accuracy_drop}")
    criterion = _check_criterion(criterion)
    small, large, labels = _check_validation(small_probs, large_probs, labels)
    order, counts, thresholds = _cuts(_SCORERS[criterion](small), _HARD_BELOW[criterion])
    device_right = (small.argmax(axis=1) == labels)[order]
    cloud_right = (large.argmax(axis=1) == labels)[order]
    # escalating the first c rows (hardest first): the cloud's answers for them, the device's for the rest
    correct = np.r_[0, np.cumsum(cloud_right)][counts] + device_right.sum() - np.r_[0, np.cumsum(device_right)][counts]
    needed = cloud_right.sum() - max_accuracy_drop * len(labels) - 1e-9
    best = np.flatnonzero(correct >= needed)[0]  # escalating everything always qualifies
    rule = HardnessRule.for_criterion(criterion, float(thresholds[best]))
    return rule, _evaluate(small, large, labels, rule)
