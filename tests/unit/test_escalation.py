"""The edge master's escalation policy: where a request runs, when a cascade escalates, how a dead
uplink is answered around, and how a cascade threshold is calibrated."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest

from fogline.core.escalation.calibration import evaluate, lowest_rate_within, threshold_for_rate
from fogline.core.escalation.catalog import CatalogEntry, Placement
from fogline.core.escalation.hardness import HardnessRule, scores
from fogline.core.escalation.policy import (
    CascadeVerdict,
    Decision,
    DeviceState,
    EscalationPolicy,
    PolicySettings,
    resolve_cascade,
)
from fogline.core.parameters import (
    ROUTE_CASCADE_EASY,
    ROUTE_CASCADE_HARD,
    ROUTE_DEGRADED,
    ROUTE_FAILOVER,
    ROUTE_HINT,
    ROUTE_OVERFLOW,
    ROUTE_PLACEMENT,
)
from fogline.errors import ErrorCode, FoglineError, InvalidInputError, OverloadedError, UnavailableError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


DIGITS = CatalogEntry(name="digits", placement=Placement.CASCADE, device_model="digits-small",
                      cloud_model="digits-large", rule=HardnessRule(max_prob_below=0.9))
MLP = CatalogEntry(name="mlp", placement=Placement.DEVICE, device_model="mlp")
MLP_PLUS = CatalogEntry(name="mlp-plus", placement=Placement.DEVICE, device_model="mlp", cloud_model="mlp-gpu")
RESNET = CatalogEntry(name="resnet", placement=Placement.CLOUD, cloud_model="resnet50")

OK = DeviceState(healthy=3, overloaded=2)  # one node still has room
BUSY = DeviceState(healthy=2, overloaded=2)
NONE = DeviceState(healthy=0)


class Reachability:
    """A fake ``CloudReachability``: a fixed answer, and how often (and about which models) it was asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked = 0
        self.models: list[str] = []

    def __call__(self, model: str) -> bool:
        self.asked += 1
        self.models.append(model)
        return self.answer


UP, DOWN = Reachability(True), Reachability(False)


# --- decide ----------------------------------------------------------------------------------------

def device(model: str, route: str, check: bool = False) -> Decision:
    return Decision(tier="device", model=model, route=route, check_hardness=check)


def cloud(model: str, route: str) -> Decision:
    return Decision(tier="cloud", model=model, route=route)


DECISIONS = [
    # entry, hint, devices, cloud reachable, expected
    (MLP, "auto", OK, True, device("mlp", ROUTE_PLACEMENT)),
    (MLP_PLUS, "auto", OK, True, device("mlp", ROUTE_PLACEMENT)),
    (MLP_PLUS, "auto", BUSY, True, cloud("mlp-gpu", ROUTE_OVERFLOW)),
    (MLP_PLUS, "auto", NONE, True, cloud("mlp-gpu", ROUTE_FAILOVER)),
    (RESNET, "auto", OK, True, cloud("resnet50", ROUTE_PLACEMENT)),
    (RESNET, "auto", NONE, True, cloud("resnet50", ROUTE_PLACEMENT)),
    (DIGITS, "auto", OK, True, device("digits-small", ROUTE_PLACEMENT, check=True)),
    (DIGITS, "auto", OK, False, device("digits-small", ROUTE_PLACEMENT, check=True)),
    (DIGITS, "auto", BUSY, True, cloud("digits-large", ROUTE_OVERFLOW)),
    (DIGITS, "auto", NONE, True, cloud("digits-large", ROUTE_FAILOVER)),
    (MLP, "device", OK, True, device("mlp", ROUTE_HINT)),
    (MLP_PLUS, "cloud", OK, True, cloud("mlp-gpu", ROUTE_HINT)),
    (RESNET, "cloud", OK, True, cloud("resnet50", ROUTE_HINT)),
    (DIGITS, "device", OK, True, device("digits-small", ROUTE_HINT)),  # the client wants the device answer
    (DIGITS, "cloud", OK, True, cloud("digits-large", ROUTE_HINT)),
]


@pytest.mark.parametrize(("entry", "hint", "devices", "reachable", "expected"), DECISIONS,
                         ids=[f"{e.name}-{h}-{d.healthy}/{d.overloaded}-{'up' if r else 'down'}"
                              for e, h, d, r, _ in DECISIONS])
def test_decide_picks_the_first_tier_and_says_why(entry: CatalogEntry, hint: str, devices: DeviceState,
                                                  reachable: bool, expected: Decision) -> None:
    decision = EscalationPolicy().decide(entry, hint=hint, device_state=devices, cloud_reachable=Reachability(reachable))
    assert decision == expected


REFUSALS = [
    # entry, hint, devices, cloud reachable, error, words the message must contain
    (MLP, "auto", BUSY, True, OverloadedError, ["all 2 healthy device nodes", "'mlp'", "queue limit",
                                                "no cloud variant"]),
    (MLP, "auto", NONE, True, UnavailableError, ["no healthy device node", "'mlp'", "no cloud variant"]),
    (MLP_PLUS, "auto", BUSY, False, OverloadedError, ["queue limit", "cloud tier is unreachable"]),
    (MLP_PLUS, "auto", NONE, False, UnavailableError, ["no healthy device node", "cloud tier is unreachable"]),
    (RESNET, "auto", OK, False, UnavailableError, ["cloud tier is unreachable", "'resnet'", "only in the cloud"]),
    (DIGITS, "auto", BUSY, False, OverloadedError, ["queue limit", "cloud tier is unreachable"]),
    (DIGITS, "auto", NONE, False, UnavailableError, ["no healthy device node", "cloud tier is unreachable"]),
    (DIGITS, "device", NONE, True, UnavailableError, ["no healthy device node", "'device' rules out the cloud"]),
    (DIGITS, "device", BUSY, True, OverloadedError, ["queue limit", "'device' rules out the cloud"]),
    (DIGITS, "cloud", OK, False, UnavailableError, ["cloud tier is unreachable", "'cloud' was asked for"]),
    (MLP, "cloud", OK, True, InvalidInputError, ["'mlp' cannot run on the cloud tier", "only on the device tier",
                                                 "'auto' or 'device'"]),
    (RESNET, "device", OK, True, InvalidInputError, ["'resnet' cannot run on the device tier",
                                                     "only on the cloud tier", "'auto' or 'cloud'"]),
]


@pytest.mark.parametrize(("entry", "hint", "devices", "reachable", "error", "words"), REFUSALS,
                         ids=[f"{e.name}-{h}-{d.healthy}/{d.overloaded}-{'up' if r else 'down'}"
                              for e, h, d, r, _, _ in REFUSALS])
def test_decide_refuses_with_a_message_that_says_why(entry: CatalogEntry, hint: str, devices: DeviceState,
                                                     reachable: bool, error: type[FoglineError],
                                                     words: list[str]) -> None:
    with pytest.raises(error) as caught:
        EscalationPolicy().decide(entry, hint=hint, device_state=devices, cloud_reachable=Reachability(reachable))
    assert type(caught.value) is error
    for word in words:
        assert word in caught.value.message


def test_overload_is_resource_exhausted_with_the_configured_retry_hint() -> None:
    policy = EscalationPolicy(PolicySettings(overload_retry_after_s=0.25))
    with pytest.raises(OverloadedError) as caught:
        policy.decide(MLP, hint="auto", device_state=BUSY, cloud_reachable=UP)
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_after_s == 0.25
    assert "retry after 0.25 s" in caught.value.message


@pytest.mark.parametrize("hint", ["gpu", "", "Cloud", "edge", 1, True])
def test_an_unknown_hint_is_invalid_input_naming_the_allowed_values(hint: object) -> None:
    with pytest.raises(InvalidInputError) as caught:
        EscalationPolicy().decide(DIGITS, hint=hint, device_state=OK, cloud_reachable=UP)  # type: ignore[arg-type]
    assert "'fogline.tier' must be one of 'auto', 'device', 'cloud'" in caught.value.message
    assert repr(hint) in caught.value.message


def test_hint_defaults_to_auto() -> None:
    assert EscalationPolicy().decide(MLP, device_state=OK, cloud_reachable=UP).route == ROUTE_PLACEMENT


@pytest.mark.parametrize(("entry", "devices", "asked"), [
    (DIGITS, OK, 0), (MLP_PLUS, OK, 0), (MLP, BUSY, 0), (MLP, NONE, 0),
    (DIGITS, BUSY, 1), (DIGITS, NONE, 1), (RESNET, OK, 1),
])
def test_reachability_is_asked_only_when_the_cloud_would_take_the_request(entry: CatalogEntry,
                                                                           devices: DeviceState,
                                                                           asked: int) -> None:
    reachable = Reachability(True)
    with contextlib.suppress(FoglineError):  # some of these refuse: only the question counts here
        EscalationPolicy().decide(entry, hint="auto", device_state=devices, cloud_reachable=reachable)
    assert reachable.asked == asked


def test_a_device_path_decision_does_not_ask_about_the_cloud_until_an_answer_is_hard() -> None:
    policy = EscalationPolicy()
    reachable = Reachability(False)
    for _ in range(5):
        policy.decide(DIGITS, hint="auto", device_state=OK, cloud_reachable=reachable)
    assert reachable.asked == 0
    easy_then_hard = [resolve_cascade(DIGITS, np.array([[0.95, 0.05]]), reachable),
                      resolve_cascade(DIGITS, np.array([[0.6, 0.4]]), reachable)]
    assert easy_then_hard == [(False, ROUTE_CASCADE_EASY), (False, ROUTE_DEGRADED)]
    assert reachable.asked == 1


def test_reachability_is_asked_about_the_entrys_cloud_model() -> None:
    reachable = Reachability(True)
    EscalationPolicy().decide(RESNET, hint="auto", device_state=OK, cloud_reachable=reachable)
    EscalationPolicy().decide(MLP_PLUS, hint="auto", device_state=BUSY, cloud_reachable=reachable)
    resolve_cascade(DIGITS, HARD, reachable)
    assert reachable.models == ["resnet50", "mlp-gpu", "digits-large"]


def test_a_device_that_fails_is_answered_by_deciding_again_with_no_healthy_device() -> None:
    policy = EscalationPolicy()
    assert policy.decide(MLP_PLUS, hint="auto", device_state=OK, cloud_reachable=UP).tier == "device"
    retry = policy.decide(MLP_PLUS, hint="auto", device_state=DeviceState(healthy=0), cloud_reachable=UP)
    assert retry == cloud("mlp-gpu", ROUTE_FAILOVER)


# --- resolve_cascade -------------------------------------------------------------------------------

EASY = np.array([[0.95, 0.03, 0.02]])
HARD = np.array([[0.5, 0.3, 0.2]])


@pytest.mark.parametrize(("probs", "reachable", "expected"), [
    (EASY, True, (False, ROUTE_CASCADE_EASY)),
    (EASY, False, (False, ROUTE_CASCADE_EASY)),
    (HARD, True, (True, ROUTE_CASCADE_HARD)),
    (HARD, False, (False, ROUTE_DEGRADED)),
])
def test_resolve_cascade(probs: np.ndarray, reachable: bool, expected: tuple[bool, str]) -> None:
    verdict = resolve_cascade(DIGITS, probs, Reachability(reachable))
    assert verdict == expected
    assert verdict.degraded is (expected[1] == ROUTE_DEGRADED)


def test_a_batch_with_one_hard_row_escalates_whole() -> None:
    escalate, route = resolve_cascade(DIGITS, np.vstack([EASY, EASY, HARD]), cloud_reachable=UP)
    assert (escalate, route) == (True, ROUTE_CASCADE_HARD)


def test_an_empty_batch_is_easy() -> None:
    assert resolve_cascade(DIGITS, np.zeros((0, 3)), UP) == CascadeVerdict(False, ROUTE_CASCADE_EASY)


def test_an_easy_answer_never_asks_about_the_cloud() -> None:
    reachable = Reachability(False)
    resolve_cascade(DIGITS, EASY, reachable)
    assert reachable.asked == 0


def test_resolve_cascade_rejects_a_model_that_is_not_a_cascade() -> None:
    with pytest.raises(ValueError, match="'mlp' is not a cascade"):
        resolve_cascade(MLP, EASY, UP)


def test_resolve_cascade_rejects_logits_from_the_device() -> None:
    with pytest.raises(InvalidInputError, match="logits"):
        resolve_cascade(DIGITS, np.array([[2.3, -1.0, 0.4]]), UP)


# --- catalog entries -------------------------------------------------------------------------------

RULE = HardnessRule(margin_below=0.2)


@pytest.mark.parametrize(("fields", "words"), [
    ({"placement": Placement.CASCADE, "device_model": "s", "cloud_model": "l"}, "needs a hardness rule"),
    ({"placement": Placement.CASCADE, "device_model": "s", "rule": RULE}, "'cascade' needs a cloud_model"),
    ({"placement": Placement.CASCADE, "cloud_model": "l", "rule": RULE}, "'cascade' needs a device_model"),
    ({"placement": Placement.DEVICE}, "'device' needs a device_model"),
    ({"placement": Placement.DEVICE, "device_model": "s", "rule": RULE}, "rule applies only to placement 'cascade'"),
    ({"placement": Placement.CLOUD}, "'cloud' needs a cloud_model"),
    ({"placement": Placement.CLOUD, "cloud_model": "l", "device_model": "s"}, "runs only in the cloud"),
    ({"placement": Placement.CLOUD, "cloud_model": "l", "rule": RULE}, "rule applies only to placement 'cascade'"),
    ({"placement": "cascade", "device_model": "s", "cloud_model": "l", "rule": RULE}, "Placement('cascade')"),
])
def test_a_catalog_entry_that_cannot_work_is_refused_on_construction(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=r"catalog entry 'm': .*" + words.replace("(", r"\(").replace(")", r"\)")):
        CatalogEntry(name="m", **fields)  # type: ignore[arg-type]


def test_a_catalog_entry_needs_a_name() -> None:
    with pytest.raises(ValueError, match="needs a name"):
        CatalogEntry(name="", placement=Placement.DEVICE, device_model="mlp")


def test_a_catalog_entry_says_which_tiers_it_runs_on_and_with_which_model() -> None:
    assert (DIGITS.tiers, MLP.tiers, MLP_PLUS.tiers, RESNET.tiers) == (
        ("device", "cloud"), ("device",), ("device", "cloud"), ("cloud",))
    assert DIGITS.model_on("device") == "digits-small"
    assert DIGITS.model_on("cloud") == "digits-large"
    with pytest.raises(ValueError, match="'mlp' does not run on tier 'cloud'"):
        MLP.model_on("cloud")


def test_catalog_values_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        CatalogEntry("mlp", Placement.DEVICE, "mlp")  # type: ignore[misc]
    with pytest.raises(TypeError):
        HardnessRule(0.5)  # type: ignore[misc]


def test_placement_parses_from_its_config_name() -> None:
    assert [Placement(name) for name in ("device", "cloud", "cascade")] == list(Placement)


@pytest.mark.parametrize(("healthy", "overloaded"), [(-1, 0), (2, 3), (1, -1)])
def test_device_state_counts_must_make_sense(healthy: int, overloaded: int) -> None:
    with pytest.raises(ValueError, match="0 <= overloaded <= healthy"):
        DeviceState(healthy=healthy, overloaded=overloaded)


# --- hardness --------------------------------------------------------------------------------------

def test_max_prob_below_is_strict() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [1.0, 0.0, 0.0]])
    assert HardnessRule(max_prob_below=0.6).is_hard(probs).tolist() == [True, False, False]
    assert HardnessRule(max_prob_below=0.0).is_hard(probs).tolist() == [False, False, False]


def test_normalised_entropy_is_zero_for_a_certain_row_and_one_for_a_uniform_row() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(scores(probs, "entropy"), [0.0, 1.0, math.log(2) / math.log(3)])
    assert HardnessRule(entropy_above=0.99).is_hard(probs).tolist() == [False, True, False]
    assert HardnessRule(entropy_above=0.6).is_hard(probs).tolist() == [False, True, True]
    assert HardnessRule(entropy_above=0.0).is_hard(probs).tolist() == [False, True, True]  # strict
    assert HardnessRule(entropy_above=1.0).is_hard(probs).tolist() == [False, False, False]


def test_margin_is_the_gap_between_the_top_two_classes() -> None:
    probs = np.array([[0.45, 0.11, 0.44], [0.5, 0.5, 0.0], [0.7, 0.2, 0.1]])
    np.testing.assert_allclose(scores(probs, "margin"), [0.01, 0.0, 0.5])
    assert HardnessRule(margin_below=0.05).is_hard(probs).tolist() == [True, True, False]
    assert HardnessRule(margin_below=0.0).is_hard(probs).tolist() == [False, False, False]


def test_max_prob_scores() -> None:
    np.testing.assert_allclose(scores(np.array([[0.2, 0.8], [0.5, 0.5]]), "max_prob"), [0.8, 0.5])


def test_a_row_is_hard_if_any_criterion_says_so() -> None:
    # row 0: confident but with a close runner-up; row 1: flat; row 2: clear
    probs = np.array([[0.52, 0.48, 0.0], [0.34, 0.33, 0.33], [0.9, 0.05, 0.05]])
    rule = HardnessRule(max_prob_below=0.5, margin_below=0.1)
    assert rule.is_hard(probs).tolist() == [True, True, False]
    assert HardnessRule(max_prob_below=0.5).is_hard(probs).tolist() == [False, True, False]


def test_an_infinite_threshold_marks_every_row_hard() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert HardnessRule(max_prob_below=math.inf).is_hard(probs).all()
    assert HardnessRule(entropy_above=-math.inf).is_hard(probs).all()
    assert not HardnessRule(margin_below=-math.inf).is_hard(probs).any()


def test_float32_softmax_rows_are_accepted() -> None:
    logits = np.random.default_rng(0).normal(size=(64, 1000)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert HardnessRule(max_prob_below=0.5).is_hard(probs).shape == (64,)


def test_is_hard_does_not_modify_its_input() -> None:
    probs = np.array([[0.6, 0.4]], dtype=np.float32)
    probs.flags.writeable = False
    HardnessRule(entropy_above=0.5, margin_below=0.1, max_prob_below=0.7).is_hard(probs)


@pytest.mark.parametrize(("probs", "words"), [
    (np.array([[2.3, -1.0, 0.4]]), "smallest value -1"),
    (np.array([[3.0, 1.0, 0.5]]), "sum 4.5"),
    (np.array([[0.5, 0.5, 0.0], [0.3, 0.3, 0.3]]), "row 1"),
    (np.array([[1.1, -0.1]]), "smallest value -0.1"),
    (np.array([[np.nan, 1.0], [2.0, -1.0]]), "row 1"),  # a NaN row is hard; the logits after it are still seen
])
def test_outputs_that_are_not_probabilities_are_rejected_with_a_hint_about_logits(probs: np.ndarray,
                                                                                   words: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        HardnessRule(max_prob_below=0.5).is_hard(probs)
    assert words in caught.value.message
    assert "logits must be configured to apply softmax" in caught.value.message


UNJUDGEABLE = [[np.nan, 1.0, 0.0], [np.inf, 0.0, 0.0], [-np.inf, 0.5, 0.5], [np.nan] * 3, [np.inf, -np.inf, 1.0]]
CERTAIN = [1.0, 0.0, 0.0]


@pytest.mark.parametrize("rule", [HardnessRule(max_prob_below=0.0), HardnessRule(entropy_above=1.0),
                                  HardnessRule(margin_below=0.0), HardnessRule(max_prob_below=0.5, margin_below=0.1)])
def test_rows_with_nan_or_inf_cannot_be_judged_and_are_hard_whatever_the_rule(rule: HardnessRule) -> None:
    probs = np.array([CERTAIN, *UNJUDGEABLE, CERTAIN])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from NaN arithmetic, per request
        hard = rule.is_hard(probs)
    assert hard.tolist() == [False, *[True] * len(UNJUDGEABLE), False]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_a_nan_answer_escalates_or_is_the_degraded_device_answer(dtype: type) -> None:
    probs = np.array([[0.95, 0.03, 0.02], [np.nan] * 3], dtype=dtype)
    assert resolve_cascade(DIGITS, probs, UP) == CascadeVerdict(True, ROUTE_CASCADE_HARD)
    verdict = resolve_cascade(DIGITS, probs, DOWN)
    assert verdict == CascadeVerdict(False, ROUTE_DEGRADED) and verdict.degraded
    assert resolve_cascade(DIGITS, np.array([[np.inf, 0.0, 0.0]], dtype=dtype), UP).escalate


def test_judging_nan_rows_leaves_the_answer_untouched() -> None:
    probs = np.array([[np.nan, 1.0], [0.6, 0.4]], dtype=np.float32)
    probs.flags.writeable = False
    assert HardnessRule(max_prob_below=0.5).is_hard(probs).tolist() == [True, False]
    assert np.isnan(probs[0, 0])


def test_calibration_data_with_nan_is_refused_not_judged() -> None:
    with pytest.raises(InvalidInputError, match="row 0 is not a probability distribution"):
        scores(np.array([[np.nan, 1.0]]), "max_prob")


@pytest.mark.parametrize("probs", [np.array([0.5, 0.5]), np.ones((2, 1)), np.ones((1, 2, 2)) / 2,
                                   np.array([["a", "b"]]), np.array([[True, False]])])
def test_probabilities_must_be_numbers_of_shape_n_by_k(probs: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match=r"shape \[N, K\] with K >= 2"):
        HardnessRule(max_prob_below=0.5).is_hard(probs)


@pytest.mark.parametrize(("fields", "words"), [
    ({}, "needs at least one of"),
    ({"max_prob_below": 1.5}, "max_prob_below must lie in"),
    ({"entropy_above": -0.1}, "entropy_above must lie in"),
    ({"margin_below": math.nan}, "margin_below must lie in"),
    ({"margin_below": "0.2"}, "margin_below must be a number"),
])
def test_a_hardness_rule_with_impossible_thresholds_is_refused(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        HardnessRule(**fields)  # type: ignore[arg-type]


def test_unknown_criterion_is_refused() -> None:
    with pytest.raises(ValueError, match="'max_prob', 'entropy', 'margin'"):
        scores(np.array([[0.5, 0.5]]), "confidence")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 'top1'"):
        HardnessRule.for_criterion("top1", 0.5)  # type: ignore[arg-type]


# --- calibration -----------------------------------------------------------------------------------

K = 10


def peaked(top: np.ndarray, p_top: np.ndarray) -> np.ndarray:
    """Rows with probability ``p_top`` on class ``top`` and the rest spread evenly."""
    probs = np.repeat(((1.0 - p_top) / (K - 1))[:, None], K, axis=1)
    probs[np.arange(len(top)), top] = p_top
    return probs


def synthetic(n: int = 1000, hard_share: float = 0.2, small_right_when_hard: float = 0.0,
              cloud_accuracy: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A small model confident and right on the easy rows, unconfident on the hard ones (right on a
    share of them), and a large model right on ``cloud_accuracy`` of the rows, in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    hard = np.zeros(n, dtype=bool)
    hard[rng.permutation(n)[: round(n * hard_share)]] = True
    small_right = ~hard | (rng.random(n) < small_right_when_hard)
    small = peaked(np.where(small_right, labels, (labels + 1) % K),
                   np.where(hard, rng.uniform(0.2, 0.5, n), rng.uniform(0.8, 0.99, n)))
    cloud_right = rng.permutation(n) < round(n * cloud_accuracy)
    large = peaked(np.where(cloud_right, labels, (labels + 2) % K), rng.uniform(0.6, 0.9, n))
    return small, large, labels, hard


@pytest.mark.parametrize("criterion", ["max_prob", "entropy", "margin"])
def test_threshold_for_rate_escalates_exactly_the_unconfident_rows(criterion: str) -> None:
    small, _, _, hard = synthetic()
    rule = threshold_for_rate(small, criterion, 0.2)  # type: ignore[arg-type]
    assert list(rule.thresholds()) == [criterion]
    assert (rule.is_hard(small) == hard).all()


@pytest.mark.parametrize(("target", "expected"), [(0.0, 0.0), (0.1, 0.1), (0.1234, 0.123), (0.35, 0.35), (1.0, 1.0)])
def test_threshold_for_rate_hits_the_largest_share_not_over_the_target(target: float, expected: float) -> None:
    small, _, _, _ = synthetic()
    for criterion in ("max_prob", "entropy", "margin"):
        rule = threshold_for_rate(small, criterion, target)  # type: ignore[arg-type]
        assert rule.is_hard(small).mean() == pytest.approx(expected)


def test_threshold_for_rate_never_splits_equal_scores() -> None:
    small = peaked(np.zeros(4, dtype=int), np.array([0.5, 0.5, 0.6, 0.7]))
    assert threshold_for_rate(small, "max_prob", 0.25).is_hard(small).tolist() == [False] * 4
    assert threshold_for_rate(small, "max_prob", 0.5) == HardnessRule(max_prob_below=0.6)
    assert threshold_for_rate(small, "max_prob", 0.8).is_hard(small).tolist() == [True, True, True, False]


def test_escalating_everything_uses_an_infinite_threshold_that_covers_new_data() -> None:
    small, _, _, _ = synthetic(n=50)
    rule = threshold_for_rate(small, "max_prob", 1.0)
    assert rule == HardnessRule(max_prob_below=math.inf)
    assert rule.is_hard(np.array([[1.0] + [0.0] * (K - 1)])).all()


def test_evaluate_takes_the_device_answer_for_easy_rows_and_the_cloud_answer_for_hard_ones() -> None:
    small = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    large = np.array([[0.1, 0.9], [0.2, 0.8], [0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])
    result = evaluate(small, large, labels, HardnessRule(max_prob_below=0.8))
    # hard rows 1 and 2: cloud says 1 (right) and 0 (wrong); easy rows 0 and 3: device right on both
    assert (result.accuracy, result.escalation_rate, result.escalated, result.total) == (0.75, 0.5, 2, 4)
    assert (result.device_accuracy, result.cloud_accuracy) == (0.75, 0.25)
    assert not result.escalates_everything


def test_lowest_rate_within_finds_the_unconfident_share() -> None:
    small, large, labels, hard = synthetic()
    rule, result = lowest_rate_within(small, large, labels, "max_prob", 0.0)
    assert (result.escalation_rate, result.accuracy, result.cloud_accuracy) == (0.2, 1.0, 1.0)
    assert (rule.is_hard(small) == hard).all()
    # half a point of allowed drop keeps the 5 least unconfident of the 200 wrong rows on the device
    rule, result = lowest_rate_within(small, large, labels, "max_prob", 0.005)
    assert (result.escalation_rate, result.accuracy) == (0.195, 0.995)


def test_lowest_rate_within_keeps_everything_on_the_device_when_the_small_model_is_good_enough() -> None:
    small, large, labels, _ = synthetic(hard_share=0.01, cloud_accuracy=0.95)
    _, result = lowest_rate_within(small, large, labels, "entropy", 0.0)
    assert (result.escalation_rate, result.device_accuracy) == (0.0, 0.99)


def test_lowest_rate_within_flags_a_small_model_that_only_escalating_everything_rescues() -> None:
    small, large, labels, _ = synthetic(hard_share=1.0)  # the small model is wrong on every row
    rule, result = lowest_rate_within(small, large, labels, "margin", 0.0)
    assert rule == HardnessRule(margin_below=math.inf)
    assert result.escalates_everything and result.escalation_rate == 1.0
    assert result.accuracy == result.cloud_accuracy


@pytest.mark.parametrize("criterion", ["max_prob", "entropy", "margin"])
@pytest.mark.parametrize("max_drop", [0.0, 0.01, 0.03])
def test_lowest_rate_within_is_the_best_of_every_threshold_on_noisy_data(criterion: str, max_drop: float) -> None:
    small, large, labels, _ = synthetic(n=300, hard_share=0.3, small_right_when_hard=0.4, cloud_accuracy=0.9, seed=7)
    rule, result = lowest_rate_within(small, large, labels, criterion, max_drop)  # type: ignore[arg-type]
    assert result.accuracy >= result.cloud_accuracy - max_drop - 1e-12
    below = criterion != "entropy"
    candidates = [*np.unique(scores(small, criterion)), math.inf if below else -math.inf]  # type: ignore[arg-type]
    results = [evaluate(small, large, labels, HardnessRule.for_criterion(criterion, float(t)))  # type: ignore[arg-type]
               for t in candidates]
    best = min(r.escalation_rate for r in results if r.accuracy >= r.cloud_accuracy - max_drop - 1e-12)
    assert result.escalation_rate == best
    assert result == evaluate(small, large, labels, rule)


def test_calibration_does_not_modify_its_inputs() -> None:
    small, large, labels, _ = synthetic(n=200)
    for array in (small, large, labels):
        array.flags.writeable = False  # any write raises
    threshold_for_rate(small, "entropy", 0.2)
    lowest_rate_within(small, large, labels, "margin", 0.01)
    evaluate(small, large, labels, HardnessRule(max_prob_below=0.7))


def test_evaluate_never_looks_at_the_cloud_answer_for_rows_kept_on_the_device() -> None:
    small, large, labels, hard = synthetic(n=400, small_right_when_hard=0.5, cloud_accuracy=0.9)
    rule = threshold_for_rate(small, "max_prob", 0.2)
    garbage = large.copy()
    garbage[~hard] = np.random.default_rng(1).dirichlet(np.ones(K), size=int((~hard).sum()))
    before, after = evaluate(small, large, labels, rule), evaluate(small, garbage, labels, rule)
    assert (before.accuracy, before.escalation_rate) == (after.accuracy, after.escalation_rate)


def test_calibration_does_not_depend_on_row_order() -> None:
    small, large, labels, _ = synthetic(n=500, small_right_when_hard=0.3, cloud_accuracy=0.92, seed=3)
    order = np.random.default_rng(2).permutation(500)
    assert (lowest_rate_within(small, large, labels, "max_prob", 0.01)
            == lowest_rate_within(small[order], large[order], labels[order], "max_prob", 0.01))
    assert threshold_for_rate(small, "margin", 0.15) == threshold_for_rate(small[order], "margin", 0.15)


def test_a_calibrated_rule_reproduces_its_rate_when_the_edge_applies_it_to_float32_outputs() -> None:
    small, _, _, _ = synthetic()
    small32 = small.astype(np.float32)
    rule = threshold_for_rate(small32, "entropy", 0.137)
    assert rule.is_hard(small32).mean() == pytest.approx(0.137)
    assert all(resolve_cascade(CatalogEntry(name="d", placement=Placement.CASCADE, device_model="s", cloud_model="l",
                                            rule=rule), row[None, :], UP).escalate == bool(h)
               for row, h in zip(small32[:100], rule.is_hard(small32)[:100], strict=True))


Call = Callable[[], object]


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda: threshold_for_rate(np.array([[0.5, 0.5]]), "max_prob", 1.5), ValueError, "target_rate"),
    (lambda: threshold_for_rate(np.zeros((0, 2)), "max_prob", 0.5), InvalidInputError, "at least one"),
    (lambda: lowest_rate_within(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]), np.array([0]), "margin", -0.1),
     ValueError, "max_accuracy_drop"),
    (lambda: evaluate(np.array([[0.5, 0.5]]), np.array([[0.3, 0.3, 0.4]]), np.array([0]),
                      HardnessRule(max_prob_below=0.5)), InvalidInputError, "one shape"),
    (lambda: evaluate(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]), np.array([0.0]),
                      HardnessRule(max_prob_below=0.5)), InvalidInputError, "integer labels"),
    (lambda: evaluate(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]), np.array([0, 1]),
                      HardnessRule(max_prob_below=0.5)), InvalidInputError, "integer labels"),
    (lambda: lowest_rate_within(np.array([[2.0, 1.0]]), np.array([[0.5, 0.5]]), np.array([0]), "margin", 0.0),
     InvalidInputError, "logits"),
])
def test_calibration_refuses_bad_arguments(call: Call, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        call()
