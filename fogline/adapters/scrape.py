"""What a dashboard reads from a process's Prometheus metrics: its traffic totals per model, the routes its
answers took, and when its process started, from its own registry or from the text of a peer's ``/metrics``.

Only the series the dashboard needs are kept, and only as many models as :data:`MAX_MODELS` (a peer's
metrics are a stranger's words: bounded whatever it sends).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from fogline.adapters.metrics import LATENCY_BUCKETS_S

MAX_MODELS = 256
"""The most models (and route labels) kept of one reading."""

_REQUESTS = "fogline_requests_total"
_BUCKETS = "fogline_request_duration_seconds_bucket"
_ROUTES = "fogline_routes_total"
_STARTED = "process_start_time_seconds"


@dataclass
class Reading:
    """One process's totals: per model ``[requests, errors, cumulative latency buckets...]`` (see
    ``fogline.core.observe.history``), answers per (model, route), and its process start time."""

    traffic: dict[str, list[float]] = field(default_factory=dict)
    routes: dict[tuple[str, str], float] = field(default_factory=dict)
    started_s: float | None = None


def read_registry(registry: CollectorRegistry) -> Reading:
    """The reading of this process's own metrics."""
    return read_families(registry.collect())


def read_text(text: str) -> Reading:
    """The reading of a peer's ``/metrics`` text; ValueError if it is not Prometheus text."""
    return read_families(text_string_to_metric_families(text))


def read_families(families: Iterable[Metric]) -> Reading:
    """The dashboard's totals out of metric families (the rest is ignored)."""
    reading, buckets = Reading(), _Buckets()
    for family in families:
        for sample in family.samples:
            value = float(sample.value)
            if not math.isfinite(value) or value < 0:
                continue
            if sample.name == _REQUESTS:
                _count_request(reading, sample.labels, value)
            elif sample.name == _BUCKETS:
                buckets.add(sample.labels, value)
            elif sample.name == _ROUTES:
                _count_route(reading, sample.labels, value)
            elif sample.name == _STARTED:
                reading.started_s = value
    buckets.fill(reading)
    return reading


def _count_request(reading: Reading, labels: dict[str, str], value: float) -> None:
    model = labels.get("model", "")
    vector = reading.traffic.get(model)
    if vector is None:
        if len(reading.traffic) >= MAX_MODELS:
            return
        vector = reading.traffic[model] = [0.0, 0.0] + [0.0] * (len(LATENCY_BUCKETS_S) + 1)
    vector[0] += value
    if labels.get("code") != "OK":
        vector[1] += value


def _count_route(reading: Reading, labels: dict[str, str], value: float) -> None:
    key = (labels.get("model", ""), labels.get("route", ""))
    if key in reading.routes or len(reading.routes) < MAX_MODELS:
        reading.routes[key] = reading.routes.get(key, 0.0) + value


class _Buckets:
    """Latency bucket counts per model, placed by their ``le`` among the known bounds."""

    def __init__(self) -> None:
        self._index = {bound: i for i, bound in enumerate(LATENCY_BUCKETS_S)}
        self._counts: dict[str, dict[int, float]] = {}

    def add(self, labels: dict[str, str], value: float) -> None:
        try:
            le = float(labels.get("le", ""))
        except ValueError:
            return
        i = len(LATENCY_BUCKETS_S) if math.isinf(le) else self._index.get(le)
        if i is not None:
            self._counts.setdefault(labels.get("model", ""), {})[i] = value

    def fill(self, reading: Reading) -> None:
        for model, counts in self._counts.items():
            vector = reading.traffic.get(model)
            if vector is not None:
                for i, value in counts.items():
                    vector[2 + i] = value
