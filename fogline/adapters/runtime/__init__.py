"""Model runtimes: the adapters to execution libraries (ONNX Runtime; PyTorch on the GPU worker).

A :class:`Runtime` is one loaded model version. The model server hands ``run`` to a
``DynamicBatcher``, which calls it off the event loop with a whole batch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fogline.core.tensors import ModelSpec


class Runtime(Protocol):
    """One loaded model version: what it accepts, where it runs, and the blocking call that runs it."""

    spec: ModelSpec
    providers: list[str]
    """Where it runs, best first, for status (e.g. ``["CUDAExecutionProvider", ...]``, ``["cpu"]``)."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: every input by name in, every output by name out. Blocks."""
        ...
