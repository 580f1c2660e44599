"""The rollout controller with a fake clock: steps advance only once applied and baked everywhere with
every gate passed, a failing gate or install rolls back at once, operator commands, plans per region,
and the rollouts surviving a restart through the JSON file store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fogline.core.lifecycle.gates import GateSettings
from fogline.core.lifecycle.plan import (
    DONE,
    PAUSED,
    ROLLED_BACK,
    RUNNING,
    ArtefactRef,
    ModelPlan,
    RolloutReport,
    VersionManifest,
    VersionStats,
)
from fogline.core.lifecycle.rollout import JsonFileStore, Rollout, RolloutController, RolloutStoreError
from fogline.errors import ConflictError, InvalidInputError, ModelNotFoundError

V1 = VersionManifest("cnn", "1", (ArtefactRef("model.onnx", "sha256:" + "a" * 64, 1000),), config="platform = 'onnx'\n")
V2 = VersionManifest("cnn", "2", (ArtefactRef("model.onnx", "sha256:" + "b" * 64, 1200),), config="platform = 'onnx'\n")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryStore:
    """A store that keeps what was saved, and counts the saves."""

    def __init__(self, rollouts: list[dict[str, Any]] | None = None) -> None:
        self.rollouts = rollouts or []
        self.saves = 0

    def load(self) -> list[dict[str, Any]]:
        return json.loads(json.dumps(self.rollouts))

    def save(self, rollouts: list[dict[str, Any]]) -> None:
        self.rollouts = json.loads(json.dumps(rollouts))  # what a real store could keep: plain JSON
        self.saves += 1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def controller(store: MemoryStore, clock: FakeClock) -> RolloutController:
    return RolloutController(store, clock=clock, wall=lambda: 1_700_000_000.0)


def good(rollout: Rollout, *, devices: int = 2, ready: int = 2, install_error: str = "",
         canary: VersionStats | None = None, stable: VersionStats | None = None) -> RolloutReport:
    """A report of ``rollout``'s current step in which every applicable gate passes."""
    return RolloutReport(
        name=rollout.model, rollout_id=rollout.id, step=rollout.step, devices=devices, devices_ready=ready,
        canary=canary or VersionStats(requests=100, p99_ms=8.0, mirrored=30, disagreed=0),
        stable=stable or VersionStats(requests=100, p99_ms=7.0), install_error=install_error)


def report_all(controller: RolloutController, regions: list[str], **kw: Any) -> None:
    rollout = controller.get("cnn")
    for region in regions:
        assert controller.report(region, good(rollout, **kw)) is None


# --- a good rollout ---------------------------------------------------------------------------------


def test_a_good_rollout_advances_after_each_bake_with_every_region_applied_and_finishes(
        controller: RolloutController, clock: FakeClock, store: MemoryStore) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1, steps=(10, 50, 100), bake_s=30.0)
    assert (rollout.state, rollout.step, rollout.percent) == (RUNNING, 0, 10)
    regions = ["eu", "us"]
    for step, percent in enumerate((10, 50, 100)):
        report_all(controller, regions)
        assert controller.tick(set(regions)) == []            # applied everywhere: the bake starts now
        clock.advance(29.0)
        report_all(controller, regions)
        assert controller.tick(set(regions)) == []
        assert "bake: 29 s of 30 s" in controller.status_json("cnn")["waiting"]
        clock.advance(1.0)
        changed = controller.tick(set(regions))
        assert [r.model for r in changed] == ["cnn"]
        if percent < 100:
            assert (changed[0].state, changed[0].step) == (RUNNING, step + 1)
            assert controller.status_json("cnn")["regions"] == {}   # a new step: a new window
    final = controller.get("cnn")
    assert final.state == DONE
    assert [e["event"] for e in final.history] == ["started", "step", "step", "done"]
    assert [e["percent"] for e in final.history] == [10, 50, 100, 100]
    assert final.history[0]["at"] == "2023-11-14T22:13:20.000Z"
    assert controller.current_version("cnn") == "2"
    assert store.saves == 4


def test_the_last_step_does_not_wait_for_stable_traffic_the_canary_takes(
        controller: RolloutController, clock: FakeClock) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1, steps=(100,), bake_s=5.0)
    no_stable = VersionStats()
    controller.report("eu", good(rollout, stable=no_stable))
    controller.tick({"eu"})
    clock.advance(5.0)
    controller.report("eu", good(rollout, stable=no_stable))
    assert [r.state for r in controller.tick({"eu"})] == [DONE]


def test_at_100_percent_errors_are_judged_against_stable_of_an_earlier_step_but_latency_is_not(
        controller: RolloutController, clock: FakeClock) -> None:
    """At 100% the stable version takes no traffic: its error rate from the step before still counts;
    its latency does not (latencies compare only within one window: the load differs across them)."""
    rollout = controller.start("cnn", "2", canary=V2, stable=V1, steps=(50, 100), bake_s=0.0)
    controller.report("eu", good(rollout, stable=VersionStats(requests=100, p99_ms=10.0)))
    rollout, = controller.tick({"eu"})
    assert rollout.percent == 100
    slow = VersionStats(requests=100, p99_ms=45.0)
    assert controller.report("eu", good(rollout, canary=slow, stable=VersionStats())) is None
    gates = {g["name"]: g for g in controller.status_json("cnn")["regions"]["eu"]["gates"]}
    assert gates["p99_ratio"]["ok"] is None and "no traffic in this window" in gates["p99_ratio"]["detail"]
    erring = VersionStats(requests=100, errors=10)
    changed = controller.report("eu", good(rollout, canary=erring, stable=VersionStats()))
    assert changed is not None and changed.state == ROLLED_BACK
    assert "gate error_rate failed" in changed.failure


# --- what holds a step ------------------------------------------------------------------------------


def test_a_region_not_applied_holds_the_step(controller: RolloutController, clock: FakeClock) -> None:
    controller.start("cnn", "2", canary=V2, stable=V1, bake_s=10.0)
    controller.report("eu", good(controller.get("cnn")))
    controller.report("us", good(controller.get("cnn"), devices=3, ready=2))
    for _ in range(3):
        clock.advance(10.0)
        assert controller.tick({"eu", "us"}) == []
    status = controller.status_json("cnn")
    assert "us: 2 of 3 devices have version 2 loaded" in status["waiting"]
    assert status["regions"]["us"]["applied"] is False and status["regions"]["eu"]["applied"] is True
    # once it applies, the bake starts then, not when the first region applied
    controller.report("us", good(controller.get("cnn"), devices=3, ready=3))
    assert controller.tick({"eu", "us"}) == []
    clock.advance(10.0)
    report_all(controller, ["eu", "us"])
    assert [r.step for r in controller.tick({"eu", "us"})] == [1]


def test_a_region_without_devices_or_report_holds_the_step(controller: RolloutController, clock: FakeClock) -> None:
    controller.start("cnn", "2", canary=V2, stable=V1, bake_s=0.0)
    controller.report("eu", good(controller.get("cnn"), devices=0, ready=0))
    assert controller.tick({"eu", "us"}) == []
    assert "a report at step 0 from regions ['us']" in controller.status_json("cnn")["waiting"]
    controller.report("us", good(controller.get("cnn")))
    assert controller.tick({"eu", "us"}) == []
    assert "eu: no device holds the model" in controller.status_json("cnn")["waiting"]


def test_no_region_present_waits(controller: RolloutController) -> None:
    controller.start("cnn", "2", canary=V2, stable=V1, bake_s=0.0)
    assert controller.tick(set()) == []
    assert "none is present" in controller.status_json("cnn")["waiting"]


def test_a_stale_region_holds_the_step(store: MemoryStore, clock: FakeClock) -> None:
    controller = RolloutController(store, clock=clock, report_timeout_s=10.0)
    controller.start("cnn", "2", canary=V2, stable=V1, bake_s=20.0)
    report_all(controller, ["eu", "us"])
    controller.tick({"eu", "us"})
    clock.advance(15.0)
    controller.report("eu", good(controller.get("cnn")))           # us says nothing for 15 s
    clock.advance(5.0)
    assert controller.tick({"eu", "us"}) == []
    status = controller.status_json("cnn")
    assert "fresh reports (last ones: us 20 s ago" in status["waiting"]
    assert status["regions"]["us"]["age_s"] == pytest.approx(20.0)
    controller.report("us", good(controller.get("cnn")))
    assert [r.step for r in controller.tick({"eu", "us"})] == [1]


def test_gates_not_judged_yet_hold_the_step_but_inapplicable_ones_do_not(
        controller: RolloutController, clock: FakeClock) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1, bake_s=0.0)
    controller.report("eu", good(rollout, canary=VersionStats(requests=12, p99_ms=8.0)))
    assert controller.tick({"eu"}) == []
    assert "eu: error_rate: 12 of 20 canary requests so far" in controller.status_json("cnn")["waiting"]
    # no mirrored answers, nothing judged: disagreement and escalation do not apply
    controller.report("eu", good(rollout, canary=VersionStats(requests=40, p99_ms=8.0)))
    assert [r.step for r in controller.tick({"eu"})] == [1]


def test_target_regions_only(controller: RolloutController, clock: FakeClock) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1, bake_s=0.0, regions=("eu",))
    failing = good(rollout, install_error="disk full")
    assert controller.report("us", failing) is None                # not a target: ignored
    controller.report("eu", good(rollout))
    assert [r.step for r in controller.tick({"us"})] == [1]        # eu need not be present to count


# --- rolling back on failure ------------------------------------------------------------------------


def test_a_failing_gate_rolls_back_at_once_naming_the_gate_and_value(
        controller: RolloutController, store: MemoryStore) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1)
    slow = VersionStats(requests=100, p99_ms=51.0)
    changed = controller.report("eu", good(rollout, canary=slow, stable=VersionStats(requests=100, p99_ms=5.0)))
    assert changed is not None and changed.state == ROLLED_BACK
    assert changed.failure == ("gate p99_ratio failed in region 'eu' at step 0 (10%): "
                               "canary p99 51.0 ms is 10.2x the stable 5.0 ms (limit 2x)")
    assert changed.history[-1]["event"] == "rolled_back" and changed.history[-1]["detail"] == changed.failure
    assert store.rollouts[0]["state"] == ROLLED_BACK
    assert controller.current_version("cnn") == "1"
    assert controller.report("eu", good(rollout)) is None          # finished: later reports are ignored


def test_early_errors_roll_back_before_min_requests(controller: RolloutController) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1)
    changed = controller.report("eu", good(rollout, canary=VersionStats(requests=5, errors=5)))
    assert changed is not None and changed.state == ROLLED_BACK
    assert changed.failure.startswith("gate error_rate failed in region 'eu' at step 0 (10%): 5 errors")


def test_an_install_error_rolls_back(controller: RolloutController) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1)
    changed = controller.report("eu", good(rollout, ready=1, install_error="device d1: sha256 mismatch"))
    assert changed is not None and changed.state == ROLLED_BACK
    assert changed.failure == "install failed in region 'eu': device d1: sha256 mismatch"


def test_reports_of_another_rollout_or_step_are_ignored(controller: RolloutController) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1)
    bad = good(rollout, install_error="boom")
    for other in (RolloutReport(**{**_fields(bad), "rollout_id": "other"}),
                  RolloutReport(**{**_fields(bad), "step": 1}),
                  RolloutReport(**{**_fields(bad), "name": "mlp"})):
        assert controller.report("eu", other) is None
    assert controller.get("cnn").state == RUNNING
    assert controller.status_json("cnn")["regions"] == {}


def _fields(report: RolloutReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in report.__slots__}


# --- operator commands ------------------------------------------------------------------------------


def test_pause_stops_advancing_and_resume_bakes_again(controller: RolloutController, clock: FakeClock) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1, bake_s=10.0)
    report_all(controller, ["eu"])
    controller.tick({"eu"})
    paused = controller.pause("cnn")
    assert paused.state == PAUSED
    clock.advance(60.0)
    report_all(controller, ["eu"])
    assert controller.tick({"eu"}) == []
    assert controller.get("cnn").step == 0
    assert "paused" in controller.status_json("cnn")["waiting"]
    assert controller.resume("cnn").state == RUNNING
    report_all(controller, ["eu"])
    assert controller.tick({"eu"}) == []                           # the bake starts again from the resume
    clock.advance(10.0)
    report_all(controller, ["eu"])
    assert [r.step for r in controller.tick({"eu"})] == [1]
    assert [e["event"] for e in controller.get("cnn").history] == ["started", "paused", "resumed", "step"]
    assert rollout.id == controller.get("cnn").id


def test_a_paused_rollout_still_rolls_back_on_a_failing_gate(controller: RolloutController) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1)
    controller.pause("cnn")
    changed = controller.report("eu", good(rollout, canary=VersionStats(requests=100, errors=50)))
    assert changed is not None and changed.state == ROLLED_BACK


def test_pause_and_resume_need_the_right_state(controller: RolloutController) -> None:
    controller.start("cnn", "2", canary=V2, stable=V1)
    with pytest.raises(ConflictError, match="is running, not paused"):
        controller.resume("cnn")
    controller.pause("cnn")
    with pytest.raises(ConflictError, match="is paused, not running"):
        controller.pause("cnn")


def test_a_second_start_while_one_runs_is_a_conflict(controller: RolloutController) -> None:
    first = controller.start("cnn", "2", canary=V2, stable=V1, steps=(10, 50, 100))
    with pytest.raises(ConflictError) as caught:
        controller.start("cnn", "2", canary=V2, stable=V1)
    assert str(caught.value) == (f"rollout {first.id} of 'cnn' to version 2 is running at step 0 (10%); "
                                 "pause, roll it back or wait for it to finish")
    controller.pause("cnn")
    with pytest.raises(ConflictError, match="is paused at step 0"):
        controller.start("cnn", "2", canary=V2, stable=V1)


def test_a_new_rollout_replaces_the_finished_one(controller: RolloutController, store: MemoryStore) -> None:
    first = controller.start("cnn", "2", canary=V2, stable=V1)
    controller.rollback("cnn")
    second = controller.start("cnn", "2", canary=V2, stable=V1)
    assert second.id != first.id
    assert [r.id for r in controller.list()] == [second.id]
    assert f"replaces rollout {first.id} (rolled_back)" in second.history[0]["detail"]
    assert [r["id"] for r in store.rollouts] == [second.id]


def test_rollback_by_operator_and_of_a_done_rollout(controller: RolloutController, clock: FakeClock) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1, steps=(100,), bake_s=0.0)
    controller.report("eu", good(rollout))
    assert [r.state for r in controller.tick({"eu"})] == [DONE]
    rolled = controller.rollback("cnn")
    assert (rolled.state, rolled.failure) == (ROLLED_BACK, "by operator")
    assert controller.current_version("cnn") == "1"
    with pytest.raises(ConflictError, match="already rolled back"):
        controller.rollback("cnn")


def test_rollback_with_no_previous_version_is_a_conflict(controller: RolloutController) -> None:
    controller.start("cnn", "2", canary=V2, stable=None, steps=(100,))
    with pytest.raises(ConflictError, match="'cnn' has no version before 2 to roll back to"):
        controller.rollback("cnn")


def test_a_first_install_needs_steps_100_and_has_no_gates(controller: RolloutController, clock: FakeClock) -> None:
    with pytest.raises(ConflictError, match=r"no stable version of 'cnn' serves anywhere.*--steps 100"):
        controller.start("cnn", "2", canary=V2, stable=None)
    rollout = controller.start("cnn", "2", canary=V2, stable=None, steps=(100,), bake_s=0.0)
    controller.report("eu", good(rollout, canary=VersionStats(requests=3, errors=3), stable=VersionStats()))
    assert [r.state for r in controller.tick({"eu"})] == [DONE]
    assert controller.current_version("cnn") == "2"


@pytest.mark.parametrize(("kw", "words"), [
    ({"steps": (50, 10, 100)}, "strictly increasing"),
    ({"steps": (10, 50)}, "ending at 100"),
    ({"steps": (0, 100)}, "from 1 to 100"),
    ({"steps": ()}, "steps are percents"),
    ({"bake_s": -1.0}, "bake_s"),
    ({"regions": ("eu", "eu")}, "distinct"),
])
def test_start_rejects_bad_arguments(controller: RolloutController, kw: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInputError, match=words):
        controller.start("cnn", "2", canary=V2, stable=V1, **kw)


def test_start_rejects_the_stable_version_and_a_mismatched_manifest(controller: RolloutController) -> None:
    with pytest.raises(InvalidInputError, match="is the stable version already"):
        controller.start("cnn", "1", canary=V1, stable=V1)
    with pytest.raises(InvalidInputError, match="canary manifest is of 'cnn' version 2, not of 'cnn' version 3"):
        controller.start("cnn", "3", canary=V2, stable=V1)


def test_an_unknown_model_is_not_found(controller: RolloutController) -> None:
    controller.start("cnn", "2", canary=V2, stable=V1)
    for command in (controller.get, controller.pause, controller.resume, controller.rollback, controller.status_json):
        with pytest.raises(ModelNotFoundError, match=r"no rollout of 'mlp'; rollouts: \['cnn'\]"):
            command("mlp")
    assert controller.current_version("mlp") is None


# --- plans ------------------------------------------------------------------------------------------


def test_plans_for_each_state(controller: RolloutController, clock: FakeClock) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1, steps=(10, 100), bake_s=0.0,
                               gates=GateSettings(shadow_share=0.5))
    assert controller.plans_for("eu") == [ModelPlan("cnn", rollout.id, stable=V1, canary=V2, canary_share=0.1,
                                                    step=0, state=RUNNING, shadow_share=0.5)]
    controller.pause("cnn")
    plan, = controller.plans_for("eu")
    assert (plan.state, plan.canary, plan.canary_share) == (PAUSED, V2, 0.1)
    controller.resume("cnn")
    report_all(controller, ["eu"])
    controller.tick({"eu"})
    assert controller.plans_for("eu")[0].canary_share == 1.0
    report_all(controller, ["eu"])
    controller.tick({"eu"})
    assert controller.plans_for("eu") == [ModelPlan("cnn", rollout.id, stable=V2, canary=None, canary_share=0.0,
                                                    step=1, state=DONE)]
    controller.rollback("cnn")
    assert controller.plans_for("eu") == [ModelPlan("cnn", rollout.id, stable=V1, step=1, state=ROLLED_BACK)]


def test_plans_only_for_the_target_regions(controller: RolloutController) -> None:
    controller.start("cnn", "2", canary=V2, stable=V1, regions=("eu",))
    mlp2 = VersionManifest("mlp", "2")
    controller.start("mlp", "2", canary=mlp2, stable=VersionManifest("mlp", "1"))
    assert [p.name for p in controller.plans_for("eu")] == ["cnn", "mlp"]
    assert [p.name for p in controller.plans_for("us")] == ["mlp"]


def test_a_first_install_plan_has_no_stable_and_no_shadowing(controller: RolloutController) -> None:
    controller.start("cnn", "2", canary=V2, stable=None, steps=(100,))
    plan, = controller.plans_for("eu")
    assert (plan.stable, plan.canary, plan.canary_share, plan.shadow_share) == (None, V2, 1.0, 0.0)


# --- status -----------------------------------------------------------------------------------------


def test_status_json_shows_the_rollout_its_regions_and_gates(controller: RolloutController, clock: FakeClock) -> None:
    rollout = controller.start("cnn", "2", canary=V2, stable=V1, bake_s=30.0)
    controller.report("eu", good(rollout))
    clock.advance(2.0)
    controller.tick({"eu"})
    status = controller.status_json("cnn")
    assert (status["id"], status["state"], status["percent"], status["version"]) == (rollout.id, RUNNING, 10, "2")
    assert status["stable"]["version"] == "1" and status["canary"]["files"][0]["size"] == 1200
    eu = status["regions"]["eu"]
    assert eu["applied"] is True and eu["age_s"] == pytest.approx(2.0)
    assert eu["report"]["canary"]["requests"] == 100
    assert {g["name"]: g["ok"] for g in eu["gates"]} == {"install": True, "error_rate": True, "p99_ratio": True,
                                                         "disagreement": True, "escalation_rate": None}
    assert status["waiting"] == "the bake: 0 s of 30 s"
    json.dumps(status)  # plain values all the way down


# --- persistence ------------------------------------------------------------------------------------


def test_a_restarted_controller_sees_the_rollout_state_and_history(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "state" / "rollouts.json"
    first = RolloutController(JsonFileStore(path), clock=clock)
    rollout = first.start("cnn", "2", canary=V2, stable=V1, steps=(10, 50, 100), bake_s=5.0, regions=("eu",),
                          gates=GateSettings(min_requests=50))
    report_all(first, ["eu"])
    first.tick({"eu"})
    clock.advance(5.0)
    report_all(first, ["eu"])
    first.tick({"eu"})
    first.start("mlp", "2", canary=VersionManifest("mlp", "2"), stable=VersionManifest("mlp", "1"))
    first.pause("mlp")

    again = RolloutController(JsonFileStore(path), clock=clock)
    cnn = again.get("cnn")
    assert cnn == first.get("cnn")
    assert (cnn.id, cnn.state, cnn.step, cnn.regions, cnn.gates.min_requests) == (rollout.id, RUNNING, 1, ("eu",), 50)
    assert [e["event"] for e in cnn.history] == ["started", "step"]
    assert again.get("mlp").state == PAUSED
    # the running one bakes its step again from fresh reports
    assert again.tick({"eu"}) == []
    assert "a report at step 1" in again.status_json("cnn")["waiting"]
    report_all(again, ["eu"])
    again.tick({"eu"})
    clock.advance(5.0)
    report_all(again, ["eu"])
    assert [r.step for r in again.tick({"eu"})] == [2]
    assert [p.name for p in again.plans_for("eu")] == ["cnn", "mlp"]


def test_a_missing_store_file_is_no_rollouts(tmp_path: Path) -> None:
    assert JsonFileStore(tmp_path / "rollouts.json").load() == []
    assert RolloutController(JsonFileStore(tmp_path / "rollouts.json")).list() == []


@pytest.mark.parametrize("body", ["{not json", '{"format": 1}', '{"format": 1, "rollouts": [{"id": "x"}]}'])
def test_a_corrupt_store_file_is_a_clear_error(tmp_path: Path, body: str) -> None:
    path = tmp_path / "rollouts.json"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(RolloutStoreError, match=r"rollouts\.json: the rollouts cannot be read") as caught:
        RolloutController(JsonFileStore(path))
    assert str(path) in str(caught.value) and "move it aside" in str(caught.value)


def test_the_store_writes_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "rollouts.json")
    controller = RolloutController(store)
    controller.start("cnn", "2", canary=V2, stable=V1)
    controller.pause("cnn")
    assert [p.name for p in tmp_path.iterdir()] == ["rollouts.json"]
    assert json.loads((tmp_path / "rollouts.json").read_text())["rollouts"][0]["state"] == PAUSED


def test_a_failed_save_changes_nothing(controller: RolloutController, store: MemoryStore) -> None:
    controller.start("cnn", "2", canary=V2, stable=V1)

    def broken(rollouts: list[dict[str, Any]]) -> None:
        raise OSError("disk full")

    store.save = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        controller.pause("cnn")
    assert controller.get("cnn").state == RUNNING
    assert [e["event"] for e in controller.get("cnn").history] == ["started"]
