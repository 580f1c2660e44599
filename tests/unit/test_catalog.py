"""The model catalog: TOML entries with clear errors, and implicit entries for models without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogline.core.escalation.catalog import Catalog, CatalogError, Placement, load_catalog, parse_catalog
from fogline.core.escalation.hardness import HardnessRule

GOOD = """
[models.digits]
placement = "cascade"
device_model = "digits-small"
cloud_model = "digits-large"
output = "probs"
max_prob_below = 0.9
margin_below = 0.2

[models.big]
placement = "cloud"
cloud_model = "resnet"
"""


def test_a_catalog_file_gives_its_entries(tmp_path: Path) -> None:
    (tmp_path / "catalog.toml").write_text(GOOD)
    catalog = load_catalog(tmp_path / "catalog.toml")
    assert catalog.names() == ["big", "digits"]
    digits = catalog.entries["digits"]
    assert (digits.placement, digits.device_model, digits.cloud_model, digits.output) == (
        Placement.CASCADE, "digits-small", "digits-large", "probs")
    assert digits.rule == HardnessRule(max_prob_below=0.9, margin_below=0.2)
    assert catalog.entries["big"].tiers == ("cloud",)


@pytest.mark.parametrize(("text", "message"), [
    ("[models.x]\nplacement = 'edge'", "placement must be one of ['device', 'cloud', 'cascade'], got 'edge'"),
    ("[models.x]\nplacement = 'cascade'\ndevice_model = 's'\ncloud_model = 'l'", "needs a hardness rule"),
    ("[models.x]\nplacement = 'cloud'", "placement 'cloud' needs a cloud_model"),
    ("[models.x]\nplacement = 'device'\ndevice_model = 's'\nmax_prob = 0.5", "unknown keys ['max_prob']"),
    ("[models.x]\nplacement = 'cascade'\ndevice_model = 's'\ncloud_model = 'l'\nmax_prob_below = 2.0",
     "max_prob_below must lie in [0, 1]"),
    ("[models.x]\nplacement = 'device'\ndevice_model = 7", "device_model must be a non-empty string, got 7"),
    ("[model.x]\nplacement = 'device'", "unknown top-level keys ['model']"),
])
def test_a_bad_catalog_names_the_file_the_entry_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_catalog_that_is_not_toml_says_so(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[models.x")
    with pytest.raises(CatalogError, match=r"c\.toml"):
        load_catalog(tmp_path / "c.toml")


def test_models_without_an_entry_run_where_they_are_held() -> None:
    catalog = parse_catalog({})
    on_both = catalog.resolve("mlp", on_devices=True, in_cloud=True)
    assert on_both is not None and (on_both.placement, on_both.device_model, on_both.cloud_model) == (
        Placement.DEVICE, "mlp", "mlp")
    only_cloud = catalog.resolve("large", on_devices=False, in_cloud=True)
    assert only_cloud is not None and only_cloud.placement is Placement.CLOUD
    assert catalog.resolve("nowhere", on_devices=False, in_cloud=False) is None


def test_an_entry_wins_over_where_a_model_is_held() -> None:
    catalog = parse_catalog({"models": {"mlp": {"placement": "cloud", "cloud_model": "mlp"}}})
    entry = catalog.resolve("mlp", on_devices=True, in_cloud=True)
    assert entry is not None and entry.placement is Placement.CLOUD
    assert catalog == Catalog([entry]) and catalog != Catalog()
