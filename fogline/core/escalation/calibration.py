"""Choosing a cascade's threshold on labelled validation data, and how a cascade does on it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fogline.core.escalation.hardness import (
    HARD_BELOW,
    SCORERS,
    Criterion,
    HardnessRule,
    as_probabilities,
    check_criterion,
    hard_rows,
    scores,
)
from fogline.errors import InvalidInputError


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
    small, large = as_probabilities(small_probs), as_probabilities(large_probs)
    labels = np.asarray(labels)
    if small.shape != large.shape or not len(small) or labels.shape != (len(small),) or labels.dtype.kind not in "iu":
        raise InvalidInputError(f"validation data needs small and large probabilities of one shape [N, K], N >= 1, "
                                f"and N integer labels; got {list(small.shape)}, {list(large.shape)} and "
                                f"{labels.dtype} labels of shape {list(labels.shape)}")
    return small, large, labels


def _evaluate(small: np.ndarray, large: np.ndarray, labels: np.ndarray, rule: HardnessRule) -> CascadeResult:
    hard = hard_rows(rule, small)
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
    criterion = check_criterion(criterion)
    values = scores(small_probs, criterion)
    if not len(values):
        raise InvalidInputError("threshold_for_rate needs at least one validation row")
    _, counts, thresholds = _cuts(values, HARD_BELOW[criterion])
    best = np.flatnonzero(counts <= target_rate * len(values) + 1e-9)[-1]
    return HardnessRule.for_criterion(criterion, float(thresholds[best]))


def lowest_rate_within(small_probs: np.ndarray, large_probs: np.ndarray, labels: np.ndarray,
                       criterion: Criterion, max_accuracy_drop: float) -> tuple[HardnessRule, CascadeResult]:
    """The rule on ``criterion`` with the lowest escalation rate whose cascade accuracy is at most
    ``max_accuracy_drop`` (absolute, e.g. 0.005) below the cloud model's on the same rows. If only
    escalating everything gets there, that rule, flagged by ``result.escalates_everything``."""
    if not 0.0 <= max_accuracy_drop <= 1.0:
        raise ValueError(f"max_accuracy_drop must lie in [0, 1], got {max_accuracy_drop}")
    criterion = check_criterion(criterion)
    small, large, labels = _check_validation(small_probs, large_probs, labels)
    order, counts, thresholds = _cuts(SCORERS[criterion](small), HARD_BELOW[criterion])
    device_right = (small.argmax(axis=1) == labels)[order]
    cloud_right = (large.argmax(axis=1) == labels)[order]
    # escalating the first c rows (hardest first): the cloud's answers for them, the device's for the rest
    correct = np.r_[0, np.cumsum(cloud_right)][counts] + device_right.sum() - np.r_[0, np.cumsum(device_right)][counts]
    needed = cloud_right.sum() - max_accuracy_drop * len(labels) - 1e-9
    best = np.flatnonzero(correct >= needed)[0]  # escalating everything always qualifies
    rule = HardnessRule.for_criterion(criterion, float(thresholds[best]))
    return rule, _evaluate(small, large, labels, rule)
