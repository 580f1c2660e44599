"""VersionTraffic: the edge's stable/canary split by plan, and each version's stats over a step's window."""

from __future__ import annotations

import random

import pytest

from fogline.core.lifecycle.plan import (
    DONE,
    PAUSED,
    ROLLED_BACK,
    RUNNING,
    ModelPlan,
    RolloutReport,
    VersionManifest,
    VersionStats,
)
from fogline.core.lifecycle.traffic import Choice, VersionTraffic
from fogline.errors import InvalidInputError


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def plan(*, stable: str | None = "1", canary: str | None = "2", share: float = 0.1, step: int = 0,
         state: str = RUNNING, rollout_id: str = "r1", shadow: float = 0.0, name: str = "mlp") -> ModelPlan:
    return ModelPlan(
        name=name, rollout_id=rollout_id,
        stable=VersionManifest(name, stable) if stable is not None else None,
        canary=VersionManifest(name, canary) if canary is not None else None,
        canary_share=share, step=step, state=state, shadow_share=shadow,
    )


def traffic(*plans: ModelPlan, clock: FakeClock | None = None, max_samples: int = 4096) -> VersionTraffic:
    t = VersionTraffic(rng=random.Random(7), clock=clock or FakeClock(), max_samples=max_samples)
    t.apply(plans)
    return t


def test_a_model_without_a_plan_is_routed_as_without_rollouts() -> None:
    t = traffic(plan())
    assert t.choose("other") is None
    assert t.plan("other") is None
    assert t.report("other", devices=1, devices_ready=1) is None
    assert not t.should_mirror("other")
    t.record("other", "1", ok=True, latency_s=0.1)  # ignored, no error
    assert t.stats("other", "1") == VersionStats()


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 1.0])
def test_the_canary_gets_about_its_share_of_requests(share: float) -> None:
    t = traffic(plan(share=share))
    choices = [t.choose("mlp") for _ in range(2000)]
    canary = sum(1 for c in choices if c is not None and c.canary)
    assert all(c is not None and c.version == ("2" if c.canary else "1") and c.stable == "1" for c in choices)
    if share in (0.0, 1.0):
        assert canary == share * 2000
    else:
        assert abs(canary / 2000 - share) < 0.04


def test_a_canary_no_device_has_loaded_gets_nothing() -> None:
    t = traffic(plan(share=1.0))
    assert t.choose("mlp", canary_ready=False) == Choice("1", canary=False, stable="1")
    assert t.choose("mlp", canary_ready=True) == Choice("2", canary=True, stable="1")


def test_a_paused_rollout_keeps_its_share() -> None:
    t = traffic(plan(share=1.0, state=PAUSED))
    assert t.choose("mlp") == Choice("2", canary=True, stable="1")


@pytest.mark.parametrize("state", [DONE, ROLLED_BACK])
def test_a_finished_rollout_serves_its_stable_version(state: str) -> None:
    t = traffic(plan(stable="2" if state == DONE else "1", canary=None, share=0.0, state=state))
    expected = "2" if state == DONE else "1"
    assert {t.choose("mlp") for _ in range(50)} == {Choice(expected, canary=False, stable=expected)}
    assert t.report("mlp", devices=3, devices_ready=3) is None
    assert t.reports(lambda model, canary: (3, 3)) == []


def test_a_finished_plan_that_still_names_a_canary_sends_nothing_to_it() -> None:
    t = traffic(plan(share=1.0, state=DONE))
    assert t.choose("mlp") == Choice("1", canary=False, stable="1")
    assert not t.should_mirror("mlp")


def test_a_first_install_goes_to_the_canary_once_ready() -> None:
    t = traffic(plan(stable=None, share=0.1))
    assert t.choose("mlp", canary_ready=False) is None
    assert {t.choose("mlp") for _ in range(50)} == {Choice("2", canary=True, stable=None)}
    assert not t.should_mirror("mlp")  # nothing to compare with


def test_stats_count_requests_and_the_p99_of_ok_latencies() -> None:
    t = traffic(plan())
    for ms in range(1, 101):  # 1..100 ms
        t.record("mlp", "2", ok=True, latency_s=ms / 1000)
    stats = t.stats("mlp", "2")
    assert stats.requests == 100
    assert stats.errors == 0
    assert stats.p99_ms == pytest.approx(99.0)
    assert t.stats("mlp", "1") == VersionStats()


def test_failures_are_counted_and_kept_out_of_the_latency() -> None:
    t = traffic(plan())
    for _ in range(10):
        t.record("mlp", "2", ok=True, latency_s=0.005)
    t.record("mlp", "2", ok=False, latency_s=30.0)  # a timeout must not become the canary's p99
    stats = t.stats("mlp", "2")
    assert (stats.requests, stats.errors) == (11, 1)
    assert stats.p99_ms == pytest.approx(5.0)
    assert stats.error_rate == pytest.approx(1 / 11)


def test_a_version_outside_the_plan_is_not_counted() -> None:
    t = traffic(plan())
    t.record("mlp", "7", ok=False, latency_s=0.1)
    t.record_judged("mlp", "7", escalated=True)
    assert t.stats("mlp", "7") == VersionStats()
    assert set(t.status()["mlp"]["versions"]) == {"1", "2"}


def test_the_latency_buffer_keeps_only_the_newest_samples() -> None:
    t = traffic(plan(), max_samples=10)
    for _ in range(100):
        t.record("mlp", "2", ok=True, latency_s=1.0)  # old and slow
    for _ in range(10):
        t.record("mlp", "2", ok=True, latency_s=0.002)
    stats = t.stats("mlp", "2")
    assert stats.requests == 110
    assert stats.p99_ms == pytest.approx(2.0)


def test_a_new_step_starts_a_new_window_and_an_identical_plan_does_not() -> None:
    clock = FakeClock(100.0)
    t = traffic(plan(step=0), clock=clock)
    t.record("mlp", "2", ok=False, latency_s=0.1)
    clock.now = 105.0
    t.apply([plan(step=0)])
    assert t.stats("mlp", "2").errors == 1
    report = t.report("mlp", devices=1, devices_ready=1)
    assert report is not None and report.window_s == pytest.approx(5.0)

    t.apply([plan(step=1, share=0.5)])
    assert t.stats("mlp", "2") == VersionStats()
    clock.now = 107.0
    report = t.report("mlp", devices=1, devices_ready=1)
    assert report is not None and (report.step, report.window_s) == (1, pytest.approx(2.0))


@pytest.mark.parametrize("changed", [plan(state=PAUSED), plan(rollout_id="r2")])
def test_a_pause_or_another_rollout_starts_a_new_window(changed: ModelPlan) -> None:
    t = traffic(plan())
    t.record("mlp", "2", ok=True, latency_s=0.1)
    t.apply([changed])
    assert t.stats("mlp", "2").requests == 0


def test_an_identical_plan_with_a_new_shadow_share_keeps_its_window_and_takes_the_share() -> None:
    t = traffic(plan(shadow=0.0))
    t.record("mlp", "2", ok=True, latency_s=0.1)
    t.apply([plan(shadow=1.0)])
    assert t.stats("mlp", "2").requests == 1
    assert t.should_mirror("mlp")


def test_a_dropped_plan_drops_its_stats() -> None:
    t = traffic(plan(name="mlp"), plan(name="cnn"))
    t.record("mlp", "2", ok=True, latency_s=0.1)
    t.record("cnn", "2", ok=True, latency_s=0.1)
    t.apply([plan(name="cnn")])
    assert t.plan("mlp") is None and t.choose("mlp") is None
    assert set(t.status()) == {"cnn"}
    assert t.stats("cnn", "2").requests == 1
    t.apply([plan(name="mlp"), plan(name="cnn")])  # planned again: a fresh window
    assert t.stats("mlp", "2").requests == 0


@pytest.mark.parametrize(("shadow", "expected"), [(0.0, 0), (0.25, 500), (1.0, 2000)])
def test_about_the_shadow_share_of_canary_requests_is_mirrored(shadow: float, expected: int) -> None:
    t = traffic(plan(shadow=shadow))
    mirrored = sum(t.should_mirror("mlp") for _ in range(2000))
    assert abs(mirrored - expected) <= 80


def test_mirrored_answers_count_on_the_canary() -> None:
    t = traffic(plan(shadow=1.0))
    for agreed in (True, True, False):
        t.record_mirror("mlp", agreed=agreed)
    t.record_mirror("other", agreed=False)  # no plan: ignored
    assert (t.stats("mlp", "2").mirrored, t.stats("mlp", "2").disagreed) == (3, 1)
    assert t.stats("mlp", "1").mirrored == 0


def test_judged_and_escalated_answers_count_per_version() -> None:
    t = traffic(plan())
    t.record_judged("mlp", "2", escalated=True)
    t.record_judged("mlp", "2", escalated=False)
    t.record_judged("mlp", "1", escalated=False)
    assert (t.stats("mlp", "2").judged, t.stats("mlp", "2").escalated) == (2, 1)
    assert (t.stats("mlp", "1").judged, t.stats("mlp", "1").escalated) == (1, 0)


def test_a_report_carries_both_versions_over_the_window() -> None:
    clock = FakeClock(10.0)
    t = traffic(plan(step=2, rollout_id="r9"), clock=clock)
    t.record("mlp", "2", ok=True, latency_s=0.010)
    t.record("mlp", "2", ok=False, latency_s=0.5)
    t.record("mlp", "1", ok=True, latency_s=0.003)
    clock.now = 12.5
    report = t.report("mlp", devices=4, devices_ready=3, install_error="node-b: disk full")
    assert report is not None
    assert (report.canary.p99_ms, report.stable.p99_ms) == (pytest.approx(10.0), pytest.approx(3.0))
    assert report == RolloutReport(
        name="mlp", rollout_id="r9", step=2, devices=4, devices_ready=3,
        canary=VersionStats(requests=2, errors=1, p99_ms=report.canary.p99_ms),
        stable=VersionStats(requests=1, p99_ms=report.stable.p99_ms),
        window_s=2.5, install_error="node-b: disk full",
    )


def test_reports_cover_every_running_or_paused_rollout() -> None:
    t = traffic(plan(name="mlp"), plan(name="cnn", canary="5", state=PAUSED),
                plan(name="old", canary=None, state=DONE))
    asked: list[tuple[str, str]] = []

    def devices_of(model: str, canary: str) -> tuple[int, int]:
        asked.append((model, canary))
        return (3, 1) if model == "mlp" else (2, 2)

    reports = t.reports(devices_of, {"cnn": "node-a: bad digest"})
    assert sorted(asked) == [("cnn", "5"), ("mlp", "2")]
    by_name = {r.name: r for r in reports}
    assert set(by_name) == {"mlp", "cnn"}
    assert (by_name["mlp"].devices, by_name["mlp"].devices_ready, by_name["mlp"].install_error) == (3, 1, "")
    assert (by_name["cnn"].devices, by_name["cnn"].devices_ready) == (2, 2)
    assert by_name["cnn"].install_error == "node-a: bad digest"


def test_a_first_install_reports_empty_stable_stats() -> None:
    t = traffic(plan(stable=None))
    t.record("mlp", "2", ok=True, latency_s=0.001)
    report = t.report("mlp", devices=1, devices_ready=0)
    assert report is not None
    assert report.canary.requests == 1 and report.stable == VersionStats()


def test_status_shows_each_plan_and_its_versions() -> None:
    clock = FakeClock(0.0)
    t = traffic(plan(share=0.25), plan(name="old", stable="3", canary=None, state=ROLLED_BACK), clock=clock)
    t.record("mlp", "2", ok=False, latency_s=0.1)
    clock.now = 1.5
    status = t.status()
    assert status["mlp"]["plan"] == {"rollout_id": "r1", "step": 0, "state": RUNNING, "share": 0.25,
                                     "stable": "1", "canary": "2"}
    assert status["mlp"]["window_s"] == pytest.approx(1.5)
    assert status["mlp"]["versions"]["2"]["errors"] == 1
    assert status["mlp"]["versions"]["2"]["error_rate"] == 1.0
    assert status["old"]["plan"]["canary"] is None
    assert set(status["old"]["versions"]) == {"3"}


@pytest.mark.parametrize(("plans", "words"), [
    ([plan(), plan()], "two plans for model 'mlp'"),
    ([plan(state="exploded")], "expected one of"),
    ([plan(share=1.5)], "within 0..1"),
    ([plan(shadow=-0.1)], "within 0..1"),
])
def test_plans_that_cannot_be_put_in_force_are_refused_and_the_old_ones_kept(
        plans: list[ModelPlan], words: str) -> None:
    t = traffic(plan(share=1.0))
    with pytest.raises(InvalidInputError, match=words):
        t.apply(plans)
    assert t.choose("mlp") == Choice("2", canary=True, stable="1")


def test_max_samples_must_be_positive() -> None:
    with pytest.raises(InvalidInputError, match="max_samples"):
        VersionTraffic(max_samples=0)
