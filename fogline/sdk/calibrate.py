"""``fogline calibrate``: choose a cascade's hardness threshold on labelled validation data, with the
models as deployed — the small one run on a device, the large one on a GPU worker, through an edge
master (``fogline.tier`` hints), so the threshold fits exactly what serves the traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fogline.core.escalation.calibration import CascadeResult, evaluate, lowest_rate_within, threshold_for_rate
from fogline.core.escalation.hardness import Criterion, HardnessRule
from fogline.core.parameters import TIER_CLOUD, TIER_DEVICE
from fogline.errors import InvalidInputError
from fogline.sdk.client import Client

_KEYS = (("x_val", "y_val"), ("x", "y"))


def load_validation(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and integer labels from an .npz holding ``x_val``/``y_val`` or ``x``/``y``."""
    with np.load(path) as arrays:
        for x_key, y_key in _KEYS:
            if x_key in arrays and y_key in arrays:
                return arrays[x_key], arrays[y_key]
        raise InvalidInputError(f"{path} holds {sorted(arrays)}; expected inputs and labels as x_val and y_val, "
                                f"or x and y")


async def probabilities(client: Client, model: str, tier: str, x: np.ndarray, *, output: str | None,
                        batch: int) -> np.ndarray:
    """``model``'s class probabilities for every row of ``x``, run on ``tier``."""
    meta = await client.model_metadata(model)
    if len(meta.inputs) != 1:
        raise InvalidInputError(f"model {model!r} takes {len(meta.inputs)} inputs; calibration needs one")
    name = meta.inputs[0].name
    parts = []
    for start in range(0, len(x), batch):
        result = await client.infer(model, {name: x[start:start + batch]}, tier=tier,
                                    outputs=[output] if output else None)
        if output is None and len(result.outputs) != 1:
            raise InvalidInputError(f"model {model!r} has outputs {sorted(result.outputs)}: name the one holding "
                                    f"class probabilities with --output")
        parts.append(result.outputs[output] if output else next(iter(result.outputs.values())))
    return np.concatenate(parts)


def choose(small: np.ndarray, large: np.ndarray, labels: np.ndarray, criterion: Criterion, *,
           target_rate: float | None, max_drop: float | None) -> tuple[HardnessRule, CascadeResult]:
    """The rule meeting the goal: at most ``target_rate`` escalated, or the lowest rate within ``max_drop``
    of the large model's accuracy."""
    if target_rate is not None:
        rule = threshold_for_rate(small, criterion, target_rate)
        return rule, evaluate(small, large, labels, rule)
    if max_drop is None:
        raise ValueError("give target_rate or max_drop")
    return lowest_rate_within(small, large, labels, criterion, max_drop)


def report(model: str, rule: HardnessRule, result: CascadeResult) -> str:
    """The outcome, and the lines to put in the catalog entry."""
    lines = [f"validation rows: {result.total}",
             f"device model alone: accuracy {result.device_accuracy:.4f}",
             f"cloud model alone:  accuracy {result.cloud_accuracy:.4f}",
             f"cascade: accuracy {result.accuracy:.4f}, escalates {result.escalation_rate:.1%} "
             f"({result.escalated} of {result.total})"]
    if result.escalates_everything:
        lines.append("note: only escalating everything meets the goal; consider placement = \"cloud\"")
    lines += ["", "# in the catalog (fogline cloud --catalog):", f"[models.{model}]"]
    names = {"max_prob": "max_prob_below", "entropy": "entropy_above", "margin": "margin_below"}
    lines += [f"{names[c]} = {t!r}" for c, t in rule.thresholds().items()]
    return "\n".join(lines)


async def calibrate(url: str, model: str, data: Path, *, criterion: Criterion, output: str | None,
                    target_rate: float | None, max_drop: float | None, batch: int = 64,
                    **client_options: Any) -> str:
    """Run the validation inputs in ``data`` through ``model`` on a device and in the cloud, via the edge
    master at ``url``, ``batch`` rows a request; choose the rule meeting the goal; the report to print.
    ``client_options`` go to the :class:`Client` (``tls``, ``api_key``)."""
    x, labels = load_validation(data)
    async with Client(url, timeout_s=30.0, **client_options) as client:
        small = await probabilities(client, model, TIER_DEVICE, x, output=output, batch=batch)
        large = await probabilities(client, model, TIER_CLOUD, x, output=output, batch=batch)
    rule, result = choose(small, large, labels, criterion, target_rate=target_rate, max_drop=max_drop)
    return report(model, rule, result)
