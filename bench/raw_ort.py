"""Raw ONNX Runtime in-process: the physical limit the servers are compared with.

The session is built exactly as the device node builds it (:class:`fogline.runtime.onnx.OnnxRuntimeModel`
from the model's ``config.toml``: same thread count, ``allow_spinning=0``, same providers).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from bench.cpu import cpu_delta, cpu_snapshot
from bench.load import CLIENT, Window
from bench.results import Measurement
from fogline.datatypes import numpy_dtype
from fogline.repository import load_model
from fogline.runtime.onnx import OnnxRuntimeModel
from fogline.types import ModelSpec

Tensors = dict[str, np.ndarray]


def load_session(model_dir: Path) -> OnnxRuntimeModel:
    """The model in ``model_dir`` loaded the way a device node loads it."""
    return OnnxRuntimeModel(load_model(model_dir))


def random_inputs(spec: ModelSpec, batch: int, seed: int = 0) -> Tensors:
    """Random inputs for ``spec`` with ``batch`` rows (every variable dimension set to ``batch``)."""
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal([batch if d == -1 else d for d in t.shape]).astype(numpy_dtype(t.datatype))
            for t in spec.inputs}


def repeat_rows(inputs: Tensors, batch: int) -> Tensors:
    """``inputs`` (one row each) repeated to ``batch`` rows."""
    return {name: np.ascontiguousarray(np.repeat(array, batch, axis=0)) for name, array in inputs.items()}


def measure_runs(model: OnnxRuntimeModel, feeds: Tensors, rows: int, window: Window) -> Measurement:
    """Call ``model.run(feeds)`` back to back; throughput in rows/s, latency per run."""
    warm_until = time.perf_counter() + window.warmup_s
    model.run(feeds)
    while time.perf_counter() < warm_until:
        model.run(feeds)
    pids = {CLIENT: os.getpid()}
    before = cpu_snapshot(pids)
    start = time.perf_counter()
    end = start + window.duration_s
    latencies: list[float] = []
    finished = start
    while finished < end:
        sent = time.perf_counter()
        model.run(feeds)
        finished = time.perf_counter()
        latencies.append(finished - sent)
    elapsed = finished - start
    cpu_s, other_cores = cpu_delta(before, cpu_snapshot(pids))
    return Measurement(count=len(latencies) * rows, duration_s=elapsed, latencies_s=latencies, cpu_s=cpu_s,
                       other_cores=other_cores, mean_batch=float(rows))
