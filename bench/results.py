"""What the benchmark records: one :class:`Measurement` per window, and medians over repetitions."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Paths a request can take, in the order the report lists them.
ORT = "raw ORT"
ORT_BATCHED = "raw ORT, batched"
DEVICE = "device"
EDGE = "edge -> device"
ECHO = "echo (gRPC only)"
DEVICE_NO_BATCHING = "device, batching off"


@dataclass(frozen=True)
class RawSetup:
    """How raw ORT runs a model: ``threads`` intra-op threads per run (0: ONNX Runtime's default,
    one per physical core) and ``parallel`` runs at once (one caller thread each, same session)."""

    threads: int = 0
    parallel: int = 1

    @property
    def label(self) -> str:
        """The setup in words, e.g. "one run on all cores" or "2 single-thread runs in parallel"."""
        if self.threads == 0:
            each = "on all cores"
            return f"one run {each}" if self.parallel == 1 else f"{self.parallel} runs in parallel, each {each}"
        kind = "single-thread" if self.threads == 1 else f"{self.threads}-thread"
        return f"one {kind} run" if self.parallel == 1 else f"{self.parallel} {kind} runs in parallel"


ALL_CORES = RawSetup()
"""One run at a time with ONNX Runtime's default thread count (every core): the single-request reference."""


@dataclass(frozen=True)
class Case:
    """One thing measured: a model through a path at a client concurrency (or raw ORT batch size)."""

    model: str
    path: str
    concurrency: int = 1
    batch: int = 1
    setup: RawSetup = ALL_CORES
    """Raw ORT only: how the session runs (other paths keep the default)."""

    def describe_raw(self) -> str:
        """A raw ORT batched case in words, e.g. "batch 4, 2 single-thread runs in parallel"."""
        return f"batch {self.batch}, {self.setup.label}"


@dataclass(frozen=True)
class Measurement:
    """One measurement window.

    ``count`` is what completed in the window: requests, or rows for raw ORT batches (whose
    latencies are per batch). ``cpu_s`` is CPU seconds per process role ("client", "device", ...).
    """

    count: int
    duration_s: float
    latencies_s: Sequence[float]
    cpu_s: dict[str, float] = field(default_factory=dict)
    other_cores: float = 0.0
    errors: int = 0
    first_error: str = ""
    mean_batch: float | None = None

    @property
    def throughput(self) -> float:
        """Requests (or rows) per second."""
        return self.count / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile latency in milliseconds (nan without any completed request)."""
        if not len(self.latencies_s):
            return float("nan")
        return float(np.percentile(self.latencies_s, q)) * 1000.0

    def cpu_us_per_item(self, role: str) -> float:
        """Microseconds of CPU ``role`` spent per completed request (or row)."""
        return self.cpu_s.get(role, 0.0) / self.count * 1e6 if self.count else float("nan")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Summary:
    """Medians over the repetitions of one case."""

    reps: int
    throughput: float
    spread: float
    """(max - min) / median of the per-repetition throughputs."""
    p50_ms: float
    p99_ms: float
    cpu_us: dict[str, float]
    """Median CPU microseconds per request (or row), by process role."""
    other_cores: float
    errors: int
    first_error: str
    mean_batch: float | None

    @classmethod
    def of(cls, measurements: Sequence[Measurement]) -> Summary:
        """The median of each quantity over ``measurements`` (one per repetition)."""
        throughputs = [m.throughput for m in measurements]
        median_tp = _median(throughputs)
        roles = sorted({role for m in measurements for role in m.cpu_s})
        batches = [m.mean_batch for m in measurements if m.mean_batch is not None]
        return cls(
            reps=len(measurements),
            throughput=median_tp,
            spread=(max(throughputs) - min(throughputs)) / median_tp if median_tp else float("nan"),
            p50_ms=_median([m.percentile_ms(50) for m in measurements]),
            p99_ms=_median([m.percentile_ms(99) for m in measurements]),
            cpu_us={role: _median([m.cpu_us_per_item(role) for m in measurements]) for role in roles},
            other_cores=_median([m.other_cores for m in measurements]),
            errors=sum(m.errors for m in measurements),
            first_error=next((m.first_error for m in measurements if m.first_error), ""),
            mean_batch=_median(batches) if batches else None,
        )

    def server_cpu_us(self) -> float:
        """CPU microseconds per request of every process but the client."""
        return sum(us for role, us in self.cpu_us.items() if role != "client")


@dataclass
class Results:
    """Every measurement of a run, by case; :meth:`summary` gives the medians."""

    measurements: dict[Case, list[Measurement]] = field(default_factory=dict)

    def add(self, case: Case, measurement: Measurement) -> None:
        self.measurements.setdefault(case, []).append(measurement)

    def summary(self, case: Case) -> Summary | None:
        """Medians for ``case``, or None if it was not measured."""
        found = self.measurements.get(case)
        return Summary.of(found) if found else None

    def raw_batched(self, model: str) -> list[Case]:
        """Raw ORT's batched cases of ``model``, by setup (in the order measured) then batch size."""
        cases = [c for c in self.measurements if c.model == model and c.path == ORT_BATCHED]
        setups = list(dict.fromkeys(c.setup for c in cases))
        return sorted(cases, key=lambda c: (setups.index(c.setup), c.batch))

    def best_batched(self, model: str) -> tuple[Case, Summary] | None:
        """Raw ORT's best batched case for ``model`` over every setup and batch size (by median rows/s)."""
        best: tuple[Case, Summary] | None = None
        for case in self.raw_batched(model):
            summary = self.summary(case)
            if summary is not None and (best is None or summary.throughput > best[1].throughput):
                best = (case, summary)
        return best
