"""The rollout gates: each passes, fails, or waits for enough samples; the error gate fails early when
the outcome is already certain."""

from __future__ import annotations

import pytest

from fogline.core.lifecycle.gates import GateResult, GateSettings, evaluate, first_failure, install_result
from fogline.core.lifecycle.plan import VersionStats
from fogline.errors import InvalidInputError

SETTINGS = GateSettings()


def gate(name: str, canary: VersionStats, stable: VersionStats, settings: GateSettings = SETTINGS) -> GateResult:
    results = {r.name: r for r in evaluate(canary, stable, settings)}
    assert list(results) == ["error_rate", "p99_ratio", "disagreement", "escalation_rate"]
    return results[name]


def stats(*, requests: int = 100, errors: int = 0, p99_ms: float = 10.0, mirrored: int = 0, disagreed: int = 0,
          judged: int = 0, escalated: int = 0) -> VersionStats:
    return VersionStats(requests=requests, errors=errors, p99_ms=p99_ms, mirrored=mirrored, disagreed=disagreed,
                        judged=judged, escalated=escalated)


# --- error rate -------------------------------------------------------------------------------------


def test_error_rate_passes_within_the_increase() -> None:
    result = gate("error_rate", stats(errors=1), stats(errors=0))
    assert result.ok is True
    assert result.value == pytest.approx(0.01)
    assert "1.0%" in result.detail and "limit 1.0 points" in result.detail


def test_error_rate_fails_above_the_increase() -> None:
    result = gate("error_rate", stats(errors=5), stats(errors=1))
    assert result.ok is False
    assert result.value == pytest.approx(0.04)
    assert "5.0% (5 of 100)" in result.detail and "4.0 points above the stable 1.0%" in result.detail


def test_error_rate_waits_for_min_requests() -> None:
    result = gate("error_rate", stats(requests=12), stats())
    assert result.ok is None
    assert result.detail == "12 of 20 canary requests so far"


def test_error_rate_fails_at_once_when_the_errors_already_decide() -> None:
    result = gate("error_rate", stats(requests=5, errors=5), stats())
    assert result.ok is False
    assert result.value == pytest.approx(5 / 20)
    assert "5 errors in the first 5 canary requests" in result.detail


def test_error_rate_early_errors_within_the_limit_still_wait() -> None:
    lenient = GateSettings(max_error_rate_increase=0.2)
    assert gate("error_rate", stats(requests=5, errors=3), stats(), lenient).ok is None   # 3/20 = 15% <= 20%
    assert gate("error_rate", stats(requests=5, errors=5), stats(), lenient).ok is False  # 5/20 = 25% > 20%


# --- p99 ratio --------------------------------------------------------------------------------------


def test_p99_ratio_passes_within_the_ratio() -> None:
    result = gate("p99_ratio", stats(p99_ms=19.0), stats(p99_ms=10.0))
    assert result.ok is True
    assert result.value == pytest.approx(1.9)


def test_p99_ratio_fails_above_the_ratio_and_counts_sub_floor_p99s_as_the_floor() -> None:
    result = gate("p99_ratio", stats(p99_ms=51.0), stats(p99_ms=0.4))
    assert result.ok is False
    assert result.value == pytest.approx(10.2)
    assert result.detail.startswith("canary p99 51.0 ms is 10.2x the stable 5.0 ms (limit 2x")


def test_p99_ratio_ignores_sub_millisecond_noise_under_the_floor() -> None:
    assert gate("p99_ratio", stats(p99_ms=3.0), stats(p99_ms=0.3)).ok is True


def test_p99_ratio_needs_enough_requests_on_both_versions() -> None:
    result = gate("p99_ratio", stats(), stats(requests=3))
    assert result.ok is None
    assert result.detail == "100 of 20 canary requests and 3 of 20 stable requests so far"
    assert gate("p99_ratio", stats(requests=19, p99_ms=500.0), stats()).ok is None


# --- disagreement -----------------------------------------------------------------------------------


def test_disagreement_passes_and_fails_on_the_share_of_mirrored_answers() -> None:
    assert gate("disagreement", stats(mirrored=40, disagreed=2), stats()).ok is True
    failed = gate("disagreement", stats(mirrored=40, disagreed=4), stats())
    assert failed.ok is False
    assert failed.value == pytest.approx(0.1)
    assert failed.detail == "4 of 40 mirrored answers (10.0%) differed from stable's (limit 5.0%)"


def test_disagreement_waits_for_min_mirrored() -> None:
    result = gate("disagreement", stats(requests=10, mirrored=3, disagreed=3), stats())
    assert result.ok is None
    assert result.detail == "3 of 10 mirrored answers so far"


def test_disagreement_without_mirrored_answers_says_why() -> None:
    result = gate("disagreement", stats(mirrored=0), stats())
    assert result.ok is None
    assert result.detail == "no mirrored answers (not a classifier, or shadowing off)"


# --- escalation rate --------------------------------------------------------------------------------


def test_escalation_rate_passes_and_fails_on_the_increase() -> None:
    assert gate("escalation_rate", stats(judged=100, escalated=12), stats(judged=100, escalated=10)).ok is True
    failed = gate("escalation_rate", stats(judged=100, escalated=30), stats(judged=100, escalated=10))
    assert failed.ok is False
    assert failed.value == pytest.approx(0.2)
    assert "30.0% (30 of 100)" in failed.detail and "20.0 points above the stable 10.0%" in failed.detail


def test_escalation_rate_waits_for_min_judged_on_both() -> None:
    result = gate("escalation_rate", stats(judged=100, escalated=90), stats(judged=5))
    assert result.ok is None
    assert "5 of 20 stable" in result.detail


def test_escalation_rate_of_a_model_that_is_no_cascade_device_model() -> None:
    result = gate("escalation_rate", stats(), stats())
    assert result.ok is None
    assert "not a cascade's device model" in result.detail


# --- install, first failure -------------------------------------------------------------------------


def test_install_result() -> None:
    assert install_result(devices=3, devices_ready=3, install_error="", version="2").ok is True
    pending = install_result(devices=3, devices_ready=1, install_error="", version="2")
    assert (pending.ok, pending.detail) == (None, "1 of 3 devices have version 2 loaded")
    assert install_result(devices=0, devices_ready=0, install_error="", version="2").ok is None
    failed = install_result(devices=3, devices_ready=1, install_error="sha256 mismatch", version="2")
    assert (failed.name, failed.ok, failed.detail) == ("install", False, "sha256 mismatch")


def test_first_failure_picks_the_first_failed_gate_and_ignores_unjudged() -> None:
    results = evaluate(stats(requests=10, p99_ms=100.0, mirrored=20, disagreed=10), stats(), SETTINGS)
    assert [r.ok for r in results] == [None, None, False, None]
    failed = first_failure(results)
    assert failed is not None and failed.name == "disagreement"
    assert first_failure(evaluate(stats(), stats(), SETTINGS)) is None


def test_result_to_json() -> None:
    result = gate("p99_ratio", stats(p99_ms=10.0), stats(p99_ms=10.0))
    assert result.to_json() == {"name": "p99_ratio", "ok": True, "value": 1.0, "limit": 2.0,
                                "detail": result.detail}


# --- settings ---------------------------------------------------------------------------------------


def test_settings_round_trip_and_partial_json() -> None:
    custom = GateSettings(max_p99_ratio=4.0, min_requests=50, shadow_share=0.0)
    assert GateSettings.from_json(custom.to_json()) == custom
    assert GateSettings.from_json({"min_requests": 5}) == GateSettings(min_requests=5)


def test_settings_unknown_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown gate settings \['max_p99', 'typo'\]"):
        GateSettings.from_json({"max_p99": 2.0, "typo": 1})


@pytest.mark.parametrize(("field", "value", "words"), [
    ("max_error_rate_increase", 1.5, "within 0..1"),
    ("shadow_share", -0.1, "within 0..1"),
    ("max_p99_ratio", 0.5, "at least 1"),
    ("p99_floor_ms", float("nan"), "at least 0"),
    ("min_requests", 0, "at least 1"),
    ("min_judged", 2.5, "whole number"),
    ("min_mirrored", True, "whole number"),
])
def test_settings_validation(field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be .*{words}") as caught:
        GateSettings(**{field: value})  # type: ignore[arg-type]
    assert isinstance(caught.value, InvalidInputError)  # the API answers INVALID_ARGUMENT
