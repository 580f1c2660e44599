"""What the tiers tell each other about models in the lifecycle (plain values, no I/O).

- The cloud master's rollouts become a :class:`ModelPlan` per model and region: which versions the
  region's devices hold (``stable``, and while a rollout runs ``canary``) and the share of the
  requests naming no version that go to the canary.
- The edge master passes its plans down to its devices, routes by them, and reports each rollout's
  live traffic back up as a :class:`RolloutReport`: one :class:`VersionStats` for the canary and
  one for the stable version over the same window (the current step's).
- A device reports each version it was told to hold as an :class:`InstallState`.

A version is named by its string (``"2"``), as in the repository and in V2's ``model_version``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fogline.core.control.registry import Member

RUNNING = "running"
PAUSED = "paused"
DONE = "done"
ROLLED_BACK = "rolled_back"
ROLLOUT_STATES = (RUNNING, PAUSED, DONE, ROLLED_BACK)

FETCHING = "fetching"
LOADING = "loading"
READY = "ready"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ArtefactRef:
    """One file of a model version: its path inside the version directory (``model.onnx``), its
    ``sha256:<hex>`` digest and its size in bytes."""

    path: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class VersionManifest:
    """What a node needs to install one version. No ``files``: the nodes hold it in their own
    repository already (a version that was never pushed to the registry)."""

    name: str
    version: str
    files: tuple[ArtefactRef, ...] = ()
    config: str = ""
    """The model's ``config.toml``, written where a node has no directory for the model yet."""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """What the members of a region do with model ``name``: hold ``stable`` (and ``canary`` while a
    rollout is running or paused), and send ``canary_share`` (0..1) of the requests that name no
    version to the canary. A ``done`` or ``rolled_back`` plan has no canary: its stable version is the
    one to serve (the new one after ``done``, the old one after ``rolled_back``)."""

    name: str
    rollout_id: str
    stable: VersionManifest | None
    canary: VersionManifest | None = None
    canary_share: float = 0.0
    step: int = 0
    """Index into the rollout's steps."""
    state: str = RUNNING
    shadow_share: float = 0.0
    """Share of the canary's requests that also run on the stable version to compare answers."""

    def versions(self) -> tuple[str, ...]:
        """The versions a device of the region holds under this plan."""
        held = [m.version for m in (self.stable, self.canary) if m is not None]
        return tuple(dict.fromkeys(held))


@dataclass(slots=True)
class VersionStats:
    """One version's live traffic over a window."""

    requests: int = 0
    errors: int = 0
    """Requests that failed for a reason that is not the client's (INTERNAL, UNAVAILABLE,
    DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED): on the canary they were retried on the stable version."""
    p99_ms: float = 0.0
    mirrored: int = 0
    """Canary requests also run on the stable version, compared by argmax..."""
    disagreed: int = 0
    """...and those whose argmax differed."""
    judged: int = 0
    """Cascade answers of this version judged on the device..."""
    escalated: int = 0
    """...and those found hard and escalated to the cloud."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class RolloutReport:
    """An edge master's account of a rollout in its region, sent with every model sync."""

    name: str
    rollout_id: str
    step: int
    devices: int
    """Devices of the region holding the model."""
    devices_ready: int
    """Of them, those that have the canary loaded."""
    canary: VersionStats = field(default_factory=VersionStats)
    stable: VersionStats = field(default_factory=VersionStats)
    window_s: float = 0.0
    """How long the stats were gathered (since this step applied in the region)."""
    install_error: str = ""
    """A device that could not install the canary, and why ("" if none)."""


@dataclass(frozen=True, slots=True)
class InstallState:
    """A device's progress with one version it was told to hold."""

    name: str
    version: str
    state: str
    """fetching, loading, ready or failed."""
    bytes_done: int = 0
    bytes_total: int = 0
    error: str = ""


class ModelSyncHandler(Protocol):
    """What a master does with a member's model sync: take its installs and reports, give its plans."""

    def sync(self, member: Member, installs: Sequence[InstallState],
             reports: Sequence[RolloutReport]) -> list[ModelPlan]: ...
