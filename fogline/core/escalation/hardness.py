"""When a cascade's device answer is too uncertain to keep (DESIGN.md §2, step 5): hardness rules over
class probabilities (max probability, normalised entropy, top-2 margin), NaN and inf counting as hard."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fogline.errors import InvalidInputError

Criterion = Literal["max_prob", "entropy", "margin"]
CRITERIA: tuple[Criterion, ...] = ("max_prob", "entropy", "margin")

_SUM_TOLERANCE = 1e-3  # NOTE: float16/float32 softmax rows sum to 1 only approximately
_RULE_FIELDS: dict[Criterion, str] = {"max_prob": "max_prob_below", "entropy": "entropy_above",
                                      "margin": "margin_below"}
HARD_BELOW: dict[Criterion, bool] = {"max_prob": True, "entropy": False, "margin": True}


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


def as_probabilities(probs: np.ndarray) -> np.ndarray:
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


SCORERS: dict[Criterion, Callable[[np.ndarray], np.ndarray]] = {
    "max_prob": _max_prob, "entropy": _normalised_entropy, "margin": _margin}


def check_criterion(criterion: str) -> Criterion:
    for known in CRITERIA:
        if criterion == known:
            return known
    raise ValueError(f"criterion must be one of {', '.join(map(repr, CRITERIA))}; got {criterion!r}")


def scores(probs: np.ndarray, criterion: Criterion) -> np.ndarray:
    """Per row of [N, K] probabilities: the top probability (``max_prob``), the normalised entropy
    H / log K in [0, 1] (``entropy``), or the top-2 margin p1 - p2 (``margin``)."""
    return SCORERS[check_criterion(criterion)](as_probabilities(probs))


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
        return cls(**{_RULE_FIELDS[check_criterion(criterion)]: threshold})

    def thresholds(self) -> dict[Criterion, float]:
        """The configured criteria and their thresholds."""
        values: dict[Criterion, float | None] = {
            "max_prob": self.max_prob_below, "entropy": self.entropy_above, "margin": self.margin_below}
        return {criterion: t for criterion, t in values.items() if t is not None}

    def is_hard(self, probs: np.ndarray) -> np.ndarray:
        """A bool per row of [N, K] probabilities; a row that cannot be judged (NaN or inf) is hard.
        InvalidInputError if the others are not probabilities."""
        values, unjudged = _judged(probs)
        return hard_rows(self, values) | unjudged


def hard_rows(rule: HardnessRule, p: np.ndarray) -> np.ndarray:
    hard = np.zeros(len(p), dtype=bool)
    for criterion, threshold in rule.thresholds().items():
        values = SCORERS[criterion](p)
        hard |= values < threshold if HARD_BELOW[criterion] else values > threshold
    return hard


