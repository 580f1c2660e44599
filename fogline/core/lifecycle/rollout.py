"""The cloud master's staged rollouts: which share of a model's traffic goes to the new version, per
region, and when to go on or roll back.

A rollout of model ``cnn`` to version 2 goes through ``steps`` of canary traffic (10%, 50%, 100%).
Each step applies in a region once every device there has the canary loaded; once it has applied in
every target region, the step bakes for ``bake_s``, and goes on if no region's gates failed and every
region has judged enough traffic. A failing gate or install in any region rolls the rollout back at
once. At 100% the stable version gets no traffic to compare with: the gates then use stable's stats
from an earlier step in that region, and the p99 ratio never holds the last step.

The edges learn what to do from :meth:`RolloutController.plans_for` and say how it goes with a
:class:`~fogline.core.lifecycle.plan.RolloutReport` about every second::

    controller = RolloutController(JsonFileStore(state_dir / "rollouts.json"))
    controller.start("cnn", "2", canary=manifest_2, stable=manifest_1)
    plans = controller.plans_for("eu")                 # on every model sync with region "eu"
    controller.report("eu", report)                    # each report from "eu": may roll back
    controller.tick({"eu", "us"})                      # every second: may go on a step, or finish

What is decided is persisted (``RolloutStore``: a JSON file, or Consul KV under Consul discovery) on
every change of state; the reports are not: after a restart a running rollout waits for fresh ones
and bakes its step again. Only the latest rollout of each model is kept.

Single-threaded by design (the cloud master's event loop): no locks.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from fogline.core.lifecycle.gates import (
    NOT_APPLICABLE,
    P99_RATIO,
    GateResult,
    GateSettings,
    evaluate,
    first_failure,
    install_result,
)
from fogline.core.lifecycle.plan import (
    DONE,
    PAUSED,
    ROLLED_BACK,
    ROLLOUT_STATES,
    RUNNING,
    ArtefactRef,
    ModelPlan,
    RolloutReport,
    VersionManifest,
    VersionStats,
)
from fogline.core.serving.repository import VERSION_NAME, ConfigError
from fogline.errors import ConflictError, InvalidInputError, ModelNotFoundError, echo_name, echo_names, truncate

STORE_FORMAT = 1
DEFAULT_GATES = GateSettings()
_ACTIVE = frozenset({RUNNING, PAUSED})


class RolloutStoreError(ConfigError):
    """A rollout store that cannot be read (a corrupt file): the operator's to fix."""


# --- the rollout ------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One model's rollout to a new version, as decided and persisted."""

    id: str
    model: str
    version: str
    stable: VersionManifest | None
    """The version serving before (None: a first install, with no gates)."""
    canary: VersionManifest
    steps: tuple[int, ...]
    """Canary traffic per step, in percent: strictly increasing, 1..100, the last 100."""
    bake_s: float
    regions: tuple[str, ...]
    """The target regions; () for every region present."""
    gates: GateSettings
    state: str
    step: int
    """Index into ``steps``."""
    created: str
    """ISO 8601 UTC."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Events: ``{"at", "event", "step", "percent", "detail"}``; event is started, step, paused, resumed,
    rolled_back or done."""
    failure: str = ""
    """Why it rolled back, when it did."""

    @property
    def percent(self) -> int:
        """The canary's share of traffic at the current step, in percent."""
        return self.steps[self.step]

    def to_json(self) -> dict[str, Any]:
        """The rollout as plain values: what the store keeps and the status API shows."""
        return {"id": self.id, "model": self.model, "version": self.version,
                "stable": _manifest_json(self.stable), "canary": _manifest_json(self.canary),
                "steps": list(self.steps), "bake_s": self.bake_s, "regions": list(self.regions),
                "gates": self.gates.to_json(), "state": self.state, "step": self.step, "created": self.created,
                "history": [dict(e) for e in self.history], "failure": self.failure}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rollout:
        """The rollout ``to_json`` gave; KeyError, TypeError or ValueError if it is not one."""
        stable = data["stable"]
        rollout = cls(id=str(data["id"]), model=str(data["model"]), version=str(data["version"]),
                      stable=_manifest(stable) if stable is not None else None, canary=_manifest(data["canary"]),
                      steps=tuple(int(p) for p in data["steps"]), bake_s=float(data["bake_s"]),
                      regions=tuple(str(r) for r in data["regions"]), gates=GateSettings.from_json(data["gates"]),
                      state=str(data["state"]), step=int(data["step"]), created=str(data["created"]),
                      history=[dict(e) for e in data["history"]], failure=str(data.get("failure", "")))
        if rollout.state not in ROLLOUT_STATES:
            raise ValueError(f"state {rollout.state!r} is not one of {', '.join(ROLLOUT_STATES)}")
        _check_steps(rollout.steps)
        if not 0 <= rollout.step < len(rollout.steps):
            raise ValueError(f"step {rollout.step} is outside the {len(rollout.steps)} steps")
        return rollout


def _manifest_json(manifest: VersionManifest | None) -> dict[str, Any] | None:
    return asdict(manifest) if manifest is not None else None


def _manifest(data: Mapping[str, Any]) -> VersionManifest:
    files = tuple(ArtefactRef(str(f["path"]), str(f["digest"]), int(f["size"])) for f in data["files"])
    return VersionManifest(str(data["name"]), str(data["version"]), files, str(data.get("config", "")))


# --- where rollouts are kept ------------------------------------------------------------------------


class RolloutStore(Protocol):
    """Where the controller keeps its rollouts (their ``to_json``) across restarts."""

    def load(self) -> list[dict[str, Any]]: ...

    def save(self, rollouts: list[dict[str, Any]]) -> None: ...


class JsonFileStore:
    """Rollouts in one JSON file, rewritten atomically (a temporary file, fsync, ``os.replace``): a crash
    leaves the previous file whole."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        """The stored rollouts; [] without a file; RolloutStoreError naming the file if it is corrupt."""
        if not self.path.exists():
            return []
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
            rollouts: list[dict[str, Any]] = body["rollouts"]
            for entry in rollouts:
                Rollout.from_json(entry)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RolloutStoreError(f"{self.path}: the rollouts cannot be read ({type(exc).__name__}: {exc}); "
                                    "restore the file from a backup or move it aside (the rollouts are lost)") from None
        return rollouts

    def save(self, rollouts: list[dict[str, Any]]) -> None:
        """Replace the stored rollouts with ``rollouts``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"format": STORE_FORMAT, "rollouts": rollouts}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


# --- what the controller knows of a rollout now (not persisted) -------------------------------------


@dataclass
class _RegionLive:
    """A region's latest report for the current step, and the gates' verdict on it."""

    report: RolloutReport
    gates: list[GateResult]
    received: float
    """On the controller's clock."""
    baseline: bool
    """The gates compared with stable's stats of an earlier window (none in this one)."""

    @property
    def applied(self) -> bool:
        return 0 < self.report.devices == self.report.devices_ready


@dataclass
class _Live:
    """The current step's window: reports per region, and since when it bakes."""

    regions: dict[str, _RegionLive] = field(default_factory=dict)
    bake_start: float | None = None
    waiting: str = "the regions' first reports"


# --- the controller ---------------------------------------------------------------------------------


class RolloutController:
    """Starts, advances, pauses and rolls back the rollouts of every model (see the module docstring)."""

    def __init__(self, store: RolloutStore, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, report_timeout_s: float = 10.0) -> None:
        if not 0.0 < report_timeout_s < math.inf:
            raise InvalidInputError(f"report_timeout_s must be a positive number of seconds, got {report_timeout_s}")
        self._store = store
        self._clock = clock
        self._wall = wall
        self.report_timeout_s = report_timeout_s
        self._rollouts: dict[str, Rollout] = {}
        self._live: dict[str, _Live] = {}
        self._baselines: dict[tuple[str, str], VersionStats] = {}
        """Per (rollout id, region): stable's latest stats with enough requests to compare with."""
        for number, entry in enumerate(store.load(), start=1):
            try:
                rollout = Rollout.from_json(entry)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RolloutStoreError(f"stored rollout #{number} cannot be read "
                                        f"({type(exc).__name__}: {exc})") from None
            self._rollouts[rollout.model] = rollout
            if rollout.state in _ACTIVE:
                self._live[rollout.model] = _Live()

    # --- operator commands ------------------------------------------------------------------------

    def start(self, model: str, version: str, *, canary: VersionManifest, stable: VersionManifest | None,
              steps: Sequence[int] = (10, 50, 100), bake_s: float = 30.0, regions: Iterable[str] = (),
              gates: GateSettings = DEFAULT_GATES) -> Rollout:
        """Start rolling ``model`` out to ``version`` (``canary``) from ``stable``; it replaces the model's
        finished rollout. ConflictError while another runs or pauses, or without a stable version to
        compare with (unless ``steps`` is ``(100,)``: an install without gates); InvalidInputError for
        bad arguments."""
        previous = self._rollouts.get(model)
        if previous is not None and previous.state in _ACTIVE:
            raise ConflictError(_busy(previous))
        checked_steps = _check_steps(tuple(steps))
        targets = _check_start(model, version, canary, stable, bake_s, tuple(regions))
        if stable is None and checked_steps != (100,):
            raise ConflictError(f"no stable version of {echo_name(model)} serves anywhere to compare the canary "
                                f"with; the gates need one. Roll version {truncate(version, 20)} out with "
                                "--steps 100: that installs it without gates")
        detail = (f"version {version} after {stable.version}" if stable is not None
                  else f"first install of version {version}, without gates")
        if previous is not None:
            detail += f"; replaces rollout {previous.id} ({previous.state})"
        rollout = Rollout(id=uuid.uuid4().hex[:12], model=model, version=version, stable=stable, canary=canary,
                          steps=checked_steps, bake_s=float(bake_s), regions=targets, gates=gates, state=RUNNING,
                          step=0, created=self._now_iso())
        rollout.history.append(self._event(rollout, "started", detail))
        self._commit(rollout)
        return rollout

    def pause(self, model: str) -> Rollout:
        """Stop advancing ``model``'s rollout; the canary keeps its share and its gates still roll back."""
        rollout = self.get(model)
        if rollout.state != RUNNING:
            raise ConflictError(f"rollout {rollout.id} of {echo_name(model)} is {_state_words(rollout)}, "
                                "not running: there is nothing to pause")
        return self._change(rollout, PAUSED, "paused", "by operator")

    def resume(self, model: str) -> Rollout:
        """Go on with ``model``'s paused rollout: its step bakes again from fresh reports."""
        rollout = self.get(model)
        if rollout.state != PAUSED:
            raise ConflictError(f"rollout {rollout.id} of {echo_name(model)} is {_state_words(rollout)}, "
                                "not paused: there is nothing to resume")
        return self._change(rollout, RUNNING, "resumed", "by operator")

    def rollback(self, model: str, reason: str = "by operator") -> Rollout:
        """Send ``model``'s traffic back to the stable version, from a running, paused or done rollout."""
        rollout = self.get(model)
        if rollout.state == ROLLED_BACK:
            raise ConflictError(f"rollout {rollout.id} of {echo_name(model)} is already rolled back "
                                f"({rollout.failure})")
        if rollout.stable is None:
            raise ConflictError(f"{echo_name(model)} has no version before {rollout.version} to roll back to; "
                                "roll another version out instead")
        return self._roll_back(rollout, reason)

    # --- questions --------------------------------------------------------------------------------

    def get(self, model: str) -> Rollout:
        """``model``'s latest rollout; ModelNotFoundError without one."""
        rollout = self._rollouts.get(model)
        if rollout is None:
            raise ModelNotFoundError(f"no rollout of {echo_name(model)}; "
                                     f"rollouts: {echo_names(sorted(self._rollouts))}")
        return rollout

    def current_version(self, model: str) -> str | None:
        """The version the fleet should serve after ``model``'s latest rollout; None while one runs or
        pauses, or without one."""
        rollout = self._rollouts.get(model)
        if rollout is None:
            return None
        if rollout.state == DONE:
            return rollout.version
        if rollout.state == ROLLED_BACK and rollout.stable is not None:
            return rollout.stable.version
        return None

    def plans_for(self, region: str) -> list[ModelPlan]:
        """What ``region`` does with each model that has a rollout targeting it, by model name."""
        return [_plan(r) for _, r in sorted(self._rollouts.items()) if not r.regions or region in r.regions]

    def status_json(self, model: str) -> dict[str, Any]:
        """``model``'s rollout for the status API: its ``to_json``, its percent, what it waits for, and
        each region's latest report with the gates' verdict on it."""
        rollout = self.get(model)
        live = self._live.get(model)
        now = self._clock()
        regions: dict[str, dict[str, Any]] = {}
        for region, seen in sorted(live.regions.items() if live is not None else (), key=lambda item: item[0]):
            regions[region] = {"report": asdict(seen.report), "gates": [g.to_json() for g in seen.gates],
                               "age_s": now - seen.received, "applied": seen.applied,
                               "stable_from_earlier_window": seen.baseline}
        waiting = ""
        if rollout.state == RUNNING and live is not None:
            waiting = live.waiting
        elif rollout.state == PAUSED:
            waiting = "an operator to resume it (paused)"
        return {**rollout.to_json(), "percent": rollout.percent, "waiting": waiting, "regions": regions}

    # --- what the edges say, and the clock --------------------------------------------------------

    def report(self, region: str, report: RolloutReport) -> Rollout | None:
        """Take ``region``'s report on its rollout of ``report.name`` and judge it: a failed install or
        gate rolls the rollout back at once. Returns the rollout if its state changed; reports of another
        rollout or step, or from a region it does not target, are ignored (None)."""
        rollout = self._rollouts.get(report.name)
        live = self._live.get(report.name)
        if (rollout is None or live is None or rollout.state not in _ACTIVE or report.rollout_id != rollout.id
                or report.step != rollout.step or (rollout.regions and region not in rollout.regions)):
            return None
        stable, baseline = self._stable_to_compare(rollout, region, report.stable)
        installed = install_result(devices=report.devices, devices_ready=report.devices_ready,
                                   install_error=report.install_error, version=rollout.version)
        gates = [installed]
        if rollout.stable is not None:
            judged = evaluate(report.canary, stable, rollout.gates)
            if baseline:  # NOTE: latencies compare only within one window: load and neighbours differ across
                judged = [GateResult(P99_RATIO, None, g.value, g.limit, "not judged: the stable version takes no "
                                     "traffic in this window") if g.name == P99_RATIO else g for g in judged]
            gates += judged
        live.regions[region] = _RegionLive(report, gates, self._clock(), baseline)
        if report.install_error:
            return self._roll_back(rollout, f"install failed in region {echo_name(region)}: {report.install_error}")
        failed = first_failure(gates)
        if failed is not None:
            return self._roll_back(rollout, f"gate {failed.name} failed in region {echo_name(region)} at step "
                                            f"{rollout.step} ({rollout.percent}%): {failed.detail}")
        return None

    def tick(self, regions_present: set[str]) -> list[Rollout]:
        """Advance every running rollout whose step has applied and baked in all its target regions
        (``regions_present`` when it names none) with every gate passed; returns those that changed."""
        changed = []
        for model, rollout in sorted(self._rollouts.items()):
            live = self._live.get(model)
            if rollout.state != RUNNING or live is None:
                continue
            targets = rollout.regions or tuple(sorted(regions_present))
            live.waiting = self._waiting(rollout, live, targets)
            if not live.waiting:
                changed.append(self._advance(rollout, targets))
        return changed

    # --- inside -----------------------------------------------------------------------------------

    def _waiting(self, rollout: Rollout, live: _Live, targets: tuple[str, ...]) -> str:
        """What the step waits for before it goes on ("" for nothing); starts its bake once it applied."""
        if not targets:
            return "a region to roll out to (none is present)"
        missing = [r for r in targets if r not in live.regions]
        if missing:
            return f"a report at step {rollout.step} from regions {echo_names(missing)}"
        pending = [f"{r}: {_devices_ready(live.regions[r].report, rollout.version)}" for r in targets
                   if not live.regions[r].applied]
        if pending:
            return "the canary on every device (" + "; ".join(pending) + ")"
        now = self._clock()
        if live.bake_start is None:
            live.bake_start = now
        stale = [f"{r} {now - live.regions[r].received:.0f} s ago" for r in targets
                 if now - live.regions[r].received > self.report_timeout_s]
        if stale:
            return f"fresh reports (last ones: {', '.join(stale)}; at most {self.report_timeout_s:g} s old)"
        baked = now - live.bake_start
        if baked < rollout.bake_s:
            return f"the bake: {math.floor(baked)} s of {rollout.bake_s:g} s"
        unjudged = [f"{r}: {g.name}: {g.detail}" for r in targets for g in live.regions[r].gates
                    if g.ok is None and not _may_stay_unjudged(rollout, g)]
        if unjudged:
            return "enough traffic to judge (" + "; ".join(unjudged) + ")"
        return ""

    def _advance(self, rollout: Rollout, targets: tuple[str, ...]) -> Rollout:
        detail = f"after {rollout.bake_s:g} s bake in regions {echo_names(targets)}"
        if rollout.step + 1 == len(rollout.steps):
            return self._change(rollout, DONE, "done", detail)
        moved = replace(rollout, step=rollout.step + 1)
        moved.history = [*rollout.history, self._event(moved, "step", detail)]
        self._commit(moved)
        return moved

    def _stable_to_compare(self, rollout: Rollout, region: str, stable: VersionStats) -> tuple[VersionStats, bool]:
        """``stable``, or stable's stats of an earlier window of this rollout in ``region`` when this
        window has too few stable requests to judge (at 100% the canary takes them all)."""
        key = (rollout.id, region)
        if stable.requests >= rollout.gates.min_requests:
            self._baselines[key] = stable
            return stable, False
        earlier = self._baselines.get(key)
        return (earlier, True) if earlier is not None else (stable, False)

    def _roll_back(self, rollout: Rollout, failure: str) -> Rollout:
        rolled = replace(rollout, failure=failure)
        return self._change(rolled, ROLLED_BACK, "rolled_back", failure)

    def _change(self, rollout: Rollout, state: str, event: str, detail: str) -> Rollout:
        changed = replace(rollout, state=state)
        changed.history = [*rollout.history, self._event(changed, event, detail)]
        self._commit(changed)
        return changed

    def _commit(self, rollout: Rollout) -> None:
        """Persist the rollouts with ``rollout`` in, then make it the model's (a failed save changes nothing).
        Its window starts anew: a new step, state or rollout has none of the old reports."""
        rollouts = {**self._rollouts, rollout.model: rollout}
        self._store.save([r.to_json() for _, r in sorted(rollouts.items())])
        previous = self._rollouts.get(rollout.model)
        self._rollouts = rollouts
        if previous is not None and previous.id != rollout.id:
            self._baselines = {k: v for k, v in self._baselines.items() if k[0] != previous.id}
        if rollout.state in _ACTIVE:
            self._live[rollout.model] = _Live()
        else:
            self._live.pop(rollout.model, None)
            self._baselines = {k: v for k, v in self._baselines.items() if k[0] != rollout.id}

    def _event(self, rollout: Rollout, event: str, detail: str) -> dict[str, Any]:
        return {"at": self._now_iso(), "event": event, "step": rollout.step, "percent": rollout.percent,
                "detail": detail}

    def _now_iso(self) -> str:
        moment = dt.datetime.fromtimestamp(self._wall(), tz=dt.timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def list(self) -> list[Rollout]:
        """Every model's latest rollout, by model name."""
        return [r for _, r in sorted(self._rollouts.items())]


def _devices_ready(report: RolloutReport, version: str) -> str:
    if report.devices <= 0:
        return "no device holds the model"
    return f"{report.devices_ready} of {report.devices} devices have version {version} loaded"


def _may_stay_unjudged(rollout: Rollout, gate: GateResult) -> bool:
    """Gates that need not judge for a step to go on: those that may not apply to the model, and the p99
    ratio at 100%, where the canary takes every request (it is judged against stable's p99 of an earlier
    step when the controller saw one, and never holds the last step for want of stable traffic)."""
    return gate.name in NOT_APPLICABLE or (gate.name == P99_RATIO and rollout.percent == 100)


def _plan(rollout: Rollout) -> ModelPlan:
    if rollout.state == DONE:
        return ModelPlan(rollout.model, rollout.id, stable=rollout.canary, step=rollout.step, state=DONE)
    if rollout.state == ROLLED_BACK:
        return ModelPlan(rollout.model, rollout.id, stable=rollout.stable, step=rollout.step, state=ROLLED_BACK)
    shadow = rollout.gates.shadow_share if rollout.stable is not None else 0.0
    return ModelPlan(rollout.model, rollout.id, stable=rollout.stable, canary=rollout.canary,
                     canary_share=rollout.percent / 100, step=rollout.step, state=rollout.state, shadow_share=shadow)


def _busy(rollout: Rollout) -> str:
    what = (f"rollout {rollout.id} of {echo_name(rollout.model)} to version {rollout.version} is "
            f"{rollout.state} at step {rollout.step} ({rollout.percent}%)")
    if rollout.state == PAUSED:
        return what + "; resume it or roll it back"
    return what + "; pause, roll it back or wait for it to finish"


def _state_words(rollout: Rollout) -> str:
    return "rolled back" if rollout.state == ROLLED_BACK else rollout.state


def _check_steps(steps: tuple[int, ...]) -> tuple[int, ...]:
    """``steps`` if they are percents, strictly increasing, 1..100, ending at 100."""
    rule = "steps are percents of traffic, strictly increasing from 1 to 100 and ending at 100 (e.g. 10,50,100)"
    percents = all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 100 for p in steps)
    if not steps or not percents or any(a >= b for a, b in itertools.pairwise(steps)) or steps[-1] != 100:
        raise InvalidInputError(f"{rule}; got {truncate(repr(list(steps)), 100)}")
    return steps


def _check_start(model: str, version: str, canary: VersionManifest, stable: VersionManifest | None,
                 bake_s: float, regions: tuple[str, ...]) -> tuple[str, ...]:
    """The target regions, once the rest of a start's arguments hold together; InvalidInputError if not."""
    if not VERSION_NAME.fullmatch(version):
        raise InvalidInputError(f"version {echo_name(version)} is not valid: a version is a plain number (1, 2, 10)")
    if canary.name != model or canary.version != version:
        raise InvalidInputError(f"the canary manifest is of {echo_name(canary.name)} version "
                                f"{truncate(canary.version, 20)}, not of {echo_name(model)} version {version}")
    if stable is not None and stable.name != model:
        raise InvalidInputError(f"the stable manifest is of {echo_name(stable.name)}, not of {echo_name(model)}")
    if stable is not None and stable.version == version:
        raise InvalidInputError(f"version {version} of {echo_name(model)} is the stable version already: "
                                "roll out another one")
    if isinstance(bake_s, bool) or not isinstance(bake_s, (int, float)) or not 0.0 <= bake_s < math.inf:
        raise InvalidInputError(f"bake_s must be a finite number of seconds of at least 0, got {bake_s!r}")
    if any(not isinstance(r, str) or not r for r in regions) or len(set(regions)) != len(regions):
        raise InvalidInputError(f"regions must be distinct, non-empty names; got {echo_names(map(str, regions))}")
    return regions
