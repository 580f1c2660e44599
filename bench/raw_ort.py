"""Raw ONNX Runtime in-process: the physical limit the servers are compared with.

Sessions are built as the device node builds them (:class:`fogline.adapters.runtime.onnx.OnnxRuntimeModel`
from the model's ``config.toml``: ``allow_spinning=0``, same providers), in two setups
(:func:`raw_setups`): one run at a time on every core (``intra_op_threads`` left to ONNX Runtime),
and the device's own (the config's ``intra_op_threads``, as many runs at once as ``[batching]
instances``). Parallel runs are threads calling one session: ``InferenceSession.run`` is
thread-safe and releases the GIL, as in the device's executor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import numpy as np

from bench.cpu import cpu_delta, cpu_snapshot
from bench.load import CLIENT, Window
from bench.results import ALL_CORES, Measurement, RawSetup
from fogline.adapters.runtime.onnx import OnnxRuntimeModel
from fogline.core.serving.repository import ModelConfig
from fogline.core.tensors import ModelSpec, numpy_dtype

Tensors = dict[str, np.ndarray]
T = TypeVar("T")


def raw_setups(config: ModelConfig) -> list[RawSetup]:
    """The setups raw ORT measures ``config`` in: :data:`ALL_CORES` first, then the device's own
    (the config's thread count, ``batching.instances`` runs at once) unless it is the same."""
    device = RawSetup(threads=config.intra_op_threads, parallel=config.batching.instances)
    return list(dict.fromkeys([ALL_CORES, device]))


def load_sessions(config: ModelConfig) -> dict[RawSetup, OnnxRuntimeModel]:
    """One session per setup of :func:`raw_setups`, built as the device builds it but with the
    setup's thread count."""
    return {setup: OnnxRuntimeModel(replace(config, intra_op_threads=setup.threads)) for setup in raw_setups(config)}


def random_inputs(spec: ModelSpec, batch: int, seed: int = 0) -> Tensors:
    """Random inputs for ``spec`` with ``batch`` rows (every variable dimension set to ``batch``)."""
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal([batch if d == -1 else d for d in t.shape]).astype(numpy_dtype(t.datatype))
            for t in spec.inputs}


def repeat_rows(inputs: Tensors, batch: int) -> Tensors:
    """``inputs`` (one row each) repeated to ``batch`` rows."""
    return {name: np.ascontiguousarray(np.repeat(array, batch, axis=0)) for name, array in inputs.items()}


def run_until(model: OnnxRuntimeModel, feeds: Tensors, until: float) -> tuple[list[float], float]:
    """Run ``feeds`` back to back until a run finishes at or after ``until`` (``time.perf_counter``):
    each run's latency, and when the last one finished."""
    latencies: list[float] = []
    finished = time.perf_counter()
    while finished < until:
        sent = time.perf_counter()
        model.run(feeds)
        finished = time.perf_counter()
        latencies.append(finished - sent)
    return latencies, finished


def _warm_up(model: OnnxRuntimeModel, feeds: Tensors, until: float) -> None:
    model.run(feeds)
    run_until(model, feeds, until)


def _on_each(pool: ThreadPoolExecutor, callers: int, fn: Callable[[], T]) -> list[T]:
    """``fn()`` on ``callers`` threads of ``pool`` at once; the results once all have returned."""
    futures = [pool.submit(fn) for _ in range(callers)]
    return [future.result() for future in futures]


def measure_runs(model: OnnxRuntimeModel, feeds: Tensors, rows: int, window: Window, parallel: int = 1) -> Measurement:
    """Call ``model.run(feeds)`` back to back from ``parallel`` threads at once.

    Throughput is the rows every thread completed over the window, which closes when the last
    thread's last run finishes; latency is per run, of all threads; CPU is this process's.
    """
    with ThreadPoolExecutor(parallel, thread_name_prefix="raw-ort") as pool:
        warm_until = time.perf_counter() + window.warmup_s
        _on_each(pool, parallel, lambda: _warm_up(model, feeds, warm_until))
        pids = {CLIENT: os.getpid()}
        before = cpu_snapshot(pids)
        start = time.perf_counter()
        end = start + window.duration_s
        runs = _on_each(pool, parallel, lambda: run_until(model, feeds, end))
        cpu_s, other_cores = cpu_delta(before, cpu_snapshot(pids))
    latencies = [latency for thread_latencies, _ in runs for latency in thread_latencies]
    elapsed = max(finished for _, finished in runs) - start
    return Measurement(count=len(latencies) * rows, duration_s=elapsed, latencies_s=latencies, cpu_s=cpu_s,
                       other_cores=other_cores, mean_batch=float(rows))
