"""Tiny TorchScript models in a model repository, for the PyTorch runtime and GPU worker tests.

Imports torch: only the tests of the cloud tier import this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

Tensors = list[tuple[str, str, list[int]]]  # (name, datatype, shape)

CLASSIFIER_INPUTS: Tensors = [("x", "FP32", [-1, 8])]
CLASSIFIER_OUTPUTS: Tensors = [("probs", "FP32", [-1, 3])]
TWO_HEADS_INPUTS: Tensors = [("a", "FP32", [-1, 4]), ("b", "FP32", [-1, 4])]
TWO_HEADS_OUTPUTS: Tensors = [("diff", "FP32", [-1, 4]), ("dot", "FP64", [-1, 1])]
LABELS_OUTPUTS: Tensors = [("score", "FP32", [-1]), ("label", "INT64", [-1])]


def config_toml(inputs: Tensors | None, outputs: Tensors | None, *, max_batch_size: int = 16,
                max_queue_delay_us: int = 0) -> str:
    """config.toml of a pytorch model; None leaves that declaration out."""
    lines = ['platform = "pytorch"', f"max_batch_size = {max_batch_size}",
             "[batching]", f"max_queue_delay_us = {max_queue_delay_us}"]
    for table, tensors in (("inputs", inputs), ("outputs", outputs)):
        for name, datatype, shape in tensors or ():
            lines += [f"[[{table}]]", f'name = "{name}"', f'datatype = "{datatype}"', f"shape = {shape}"]
    return "\n".join(lines) + "\n"


class Classifier(nn.Module):
    """Linear + softmax: one output tensor."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=1)


class TwoHeads(nn.Module):
    """Two inputs (order matters: a - b) and a tuple of two outputs."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a - b, (a * b).sum(dim=1, keepdim=True)


class Labels(nn.Module):
    """A dict of outputs, in another order than config.toml declares them."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = Classifier()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = self.classifier(x)
        return {"label": probs.argmax(dim=1), "score": probs.max(dim=1).values}


class DoublesInPlace(nn.Module):
    """Writes to its input: must never touch the caller's buffer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(2)


def save(root: Path, name: str, module: torch.jit.ScriptModule, config: str) -> Path:
    """Write ``<root>/<name>/1/model.pt`` and its config.toml; the model directory."""
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    module.save(str(root / name / "1" / "model.pt"))
    (root / name / "config.toml").write_text(config)
    return root / name


def classifier_repository(root: Path, **batching: int) -> Path:
    """A repository with the scripted classifier as model "classifier"."""
    save(root, "classifier", torch.jit.script(Classifier()),
         config_toml(CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS, **batching))
    return root
