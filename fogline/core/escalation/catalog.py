"""The model catalog: for each model as clients name it, where it runs (DESIGN.md §2, step 2).

The cloud master loads it from a TOML file and serves it to the edge masters::

    # catalog.toml
    [models.digits]                  # clients ask for "digits"
    placement = "cascade"            # "device", "cloud" or "cascade"
    device_model = "digits-small"    # what device nodes hold for it
    cloud_model = "digits-large"     # what GPU workers hold for it
    output = "probs"                 # cascade: the device output holding class probabilities
    max_prob_below = 0.9             # cascade: hard when the top probability is below this ...
    # entropy_above = 0.5            # ... or the normalised entropy is above this ...
    # margin_below = 0.2             # ... or the top-2 margin is below this

A model with no entry is still served, by what holds it: on devices (placement ``device``, and in
the cloud too for overflow and failover when GPU workers also hold a model of that name), or else
on GPU workers (placement ``cloud``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogline.core.escalation.hardness import HardnessRule
from fogline.core.parameters import (
    TIER_CLOUD,
    TIER_DEVICE,
)
from fogline.core.toml import tomllib

_RULE_KEYS = ("max_prob_below", "entropy_above", "margin_below")
_ENTRY_KEYS = frozenset({"placement", "device_model", "cloud_model", "output", *_RULE_KEYS})



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


class CatalogError(ValueError):
    """A catalog that cannot be used; the message names the file and the entry."""


class Catalog:
    """The configured entries, and the implicit ones of models without an entry."""

    def __init__(self, entries: Iterable[CatalogEntry] = ()) -> None:
        self.entries: dict[str, CatalogEntry] = {entry.name: entry for entry in entries}
        self._implicit: dict[tuple[str, bool, bool], CatalogEntry] = {}

    def resolve(self, name: str, *, on_devices: bool, in_cloud: bool) -> CatalogEntry | None:
        """The entry for ``name``, given whether device nodes and GPU workers hold a model of that
        name; None if nothing can serve it."""
        entry = self.entries.get(name)
        if entry is not None:
            return entry
        if not (on_devices or in_cloud):
            return None
        key = (name, on_devices, in_cloud)
        implicit = self._implicit.get(key)
        if implicit is None:
            if len(self._implicit) > 4096:  # names come from the pools, but stay bounded
                self._implicit.clear()
            implicit = self._implicit[key] = CatalogEntry(
                name=name, placement=Placement.DEVICE if on_devices else Placement.CLOUD,
                device_model=name if on_devices else None, cloud_model=name if in_cloud else None)
        return implicit

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and self.entries == other.entries

    def __repr__(self) -> str:
        return f"Catalog({self.names()})"


def describe(entry: CatalogEntry) -> dict[str, Any]:
    """An entry as JSON for status pages."""
    out: dict[str, Any] = {"name": entry.name, "placement": entry.placement.value,
                           "device_model": entry.device_model, "cloud_model": entry.cloud_model}
    if entry.rule is not None:
        out["rule"] = entry.rule.thresholds()
        out["output"] = entry.output
    return out


def parse_catalog(raw: dict[str, Any], source: str = "catalog") -> Catalog:
    """A catalog from its TOML document (``{"models": {name: {...}}}``); CatalogError naming ``source``."""
    unknown = sorted(set(raw) - {"models"})
    if unknown:
        raise CatalogError(f"{source}: unknown top-level keys {unknown}; entries go under [models.<name>]")
    models = raw.get("models", {})
    if not isinstance(models, dict):
        raise CatalogError(f"{source}: 'models' must be a table of entries, [models.<name>]")
    return Catalog(_entry(name, table, source) for name, table in models.items())


def _entry(name: str, table: Any, source: str) -> CatalogEntry:
    where = f"{source}: [models.{name}]"
    if not isinstance(table, dict):
        raise CatalogError(f"{where} must be a table")
    unknown = sorted(set(table) - _ENTRY_KEYS)
    if unknown:
        raise CatalogError(f"{where}: unknown keys {unknown}; known: {sorted(_ENTRY_KEYS)}")
    placements = [p.value for p in Placement]
    if table.get("placement") not in placements:
        raise CatalogError(f"{where}: placement must be one of {placements}, got {table.get('placement')!r}")
    thresholds = {key: table[key] for key in _RULE_KEYS if key in table}
    try:
        rule = HardnessRule(**thresholds) if thresholds else None
        return CatalogEntry(name=name, placement=Placement(table["placement"]),
                            device_model=_text(table, "device_model", where),
                            cloud_model=_text(table, "cloud_model", where), rule=rule,
                            output=_text(table, "output", where))
    except ValueError as exc:
        raise CatalogError(f"{where}: {exc}") from None


def _text(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise CatalogError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def load_catalog(path: Path) -> Catalog:
    """The catalog in the TOML file at ``path``."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from None
    return parse_catalog(raw, str(path))
