"""fogline calibrate's offline parts: reading validation data, meeting the goal, the catalog lines it prints."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fogline.core.escalation.catalog import parse_catalog
from fogline.errors import InvalidInputError
from fogline.sdk.calibrate import choose, load_validation, report

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Four rows: the small model is unsure of rows 2 and 3, and wrong on row 3; the large one is always right.
SMALL = np.array([[0.99, 0.01], [0.95, 0.05], [0.6, 0.4], [0.55, 0.45]])
LARGE = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
LABELS = np.array([0, 0, 0, 1])


def test_validation_data_comes_from_either_pair_of_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x_val=np.zeros((2, 3)), y_val=np.array([0, 1]))
    np.savez(tmp_path / "b.npz", x=np.ones((1, 3)), y=np.array([1]))
    assert load_validation(tmp_path / "a.npz")[0].shape == (2, 3)
    assert load_validation(tmp_path / "b.npz")[1].tolist() == [1]
    np.savez(tmp_path / "c.npz", inputs=np.ones((1, 3)))
    with pytest.raises(InvalidInputError, match=r"holds \['inputs'\]; expected inputs and labels as x_val and y_val"):
        load_validation(tmp_path / "c.npz")


def test_a_target_rate_and_an_accuracy_goal_pick_the_expected_rules() -> None:
    _, result = choose(SMALL, LARGE, LABELS, "max_prob", target_rate=0.5, max_drop=None)
    assert result.escalated == 2 and result.accuracy == 1.0
    _, result = choose(SMALL, LARGE, LABELS, "max_prob", target_rate=None, max_drop=0.0)
    assert result.escalated == 1 and result.accuracy == 1.0  # only the row the small model gets wrong


def test_the_report_ends_with_catalog_lines_that_parse() -> None:
    rule, result = choose(SMALL, LARGE, LABELS, "margin", target_rate=0.5, max_drop=None)
    text = report("digits", rule, result)
    assert "cascade: accuracy 1.0000, escalates 50.0% (2 of 4)" in text
    header, *rule_lines = text.split("# in the catalog (fogline cloud --catalog):\n")[1].splitlines()
    toml = "\n".join([header, 'placement = "cascade"', 'device_model = "s"', 'cloud_model = "l"', *rule_lines])
    entry = parse_catalog(tomllib.loads(toml)).entries["digits"]
    assert entry.rule is not None and entry.rule.margin_below == rule.margin_below
