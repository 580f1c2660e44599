"""Prometheus metrics of one process, in a registry of its own (so tests can run many processes' worth)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
UNKNOWN_MODEL = "_unknown"  # label for requests naming no served model: bounded cardinality

GaugeSample = tuple[str, str, dict[str, str], float]


class Metrics:
    """Request, latency and batch metrics, plus gauges read from the process at scrape time.

    ``is_member`` says whether an upstream endpoint id is still a member of this process's pools:
    :meth:`prune_departed` removes the series of those that are not, and none is created again for
    them (an attempt that finishes after its endpoint left is not counted). None: every id is one.
    """

    def __init__(self, tier: str, *, is_member: Callable[[str], bool] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # NOTE: process_start_time_seconds among them: a dashboard tells a restarted process by it.
        ProcessCollector(registry=self.registry)
        self.tier = tier
        self._is_member = is_member or _always
        self.requests = Counter("fogline_requests", "Inference requests by model and result code",
                                ["model", "code"], registry=self.registry)
        self.latency = Histogram("fogline_request_duration_seconds", "Inference latency as served here",
                                 ["model"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.batch_size = Histogram("fogline_batch_size", "Requests per executed batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_duration = Histogram("fogline_batch_duration_seconds", "Time to run one batch",
                                        ["model"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.upstream = Counter("fogline_upstream_requests", "Requests sent to upstream endpoints by result",
                                ["endpoint", "code"], registry=self.registry)
        self._counters: dict[tuple[str, str], Counter] = {}  # labelled children, looked up per request
        self._latencies: dict[str, Histogram] = {}
        self.retries = Counter("fogline_retries", "Requests retried on another endpoint",
                               registry=self.registry)
        self.routes = Counter("fogline_routes", "Requests an edge master answered, by where they ran and why",
                              ["tier", "route", "model"], registry=self.registry)
        self._routes: dict[tuple[str, ...], Counter] = {}
        self._attempts: dict[tuple[str, ...], Counter] = {}

    def observe(self, model: str, code: str, seconds: float) -> None:
        counter = self._counters.get((model, code))
        if counter is None:
            counter = self._counters[(model, code)] = self.requests.labels(model, code)
        counter.inc()
        if code == "OK":
            histogram = self._latencies.get(model)
            if histogram is None:
                histogram = self._latencies[model] = self.latency.labels(model)
            histogram.observe(seconds)

    def route_counter(self, tier: str, route: str, model: str = "") -> Counter:
        """The counter of requests for ``model`` an edge master answered on ``tier`` for ``route`` (the
        ``fogline.route`` label); ``fogline.adapters.grpc.forward.RouteTags`` keeps it with the answer's tag."""
        return _child(self.routes, self._routes, tier, route, model)

    def count_attempt(self, endpoint: str, code: str) -> None:
        """One attempt at an upstream endpoint and its result code; non-OK ones are retried elsewhere."""
        child = self._attempts.get((endpoint, code))
        if child is None and self._is_member(endpoint):
            child = _child(self.upstream, self._attempts, endpoint, code)
        if child is not None:
            child.inc()
        if code != "OK":
            self.retries.inc()

    def prune_departed(self) -> None:
        """Remove the series of upstream endpoints that are no longer members."""
        for labels in [labels for labels in self._attempts if not self._is_member(labels[0])]:
            del self._attempts[labels]
            self.upstream.remove(*labels)

    def batch_observer(self, model: str) -> Callable[[int, int, float], None]:
        size, duration = self.batch_size.labels(model), self.batch_duration.labels(model)

        def observe(requests: int, rows: int, seconds: float) -> None:
            size.observe(requests)
            duration.observe(seconds)

        return observe

    def add_gauges(self, read: Callable[[], Iterable[GaugeSample]]) -> None:
        """Register gauges whose values ``read`` returns as (name, help, labels, value) at scrape time."""
        self.registry.register(_ReadCollector(read, GaugeMetricFamily))

    def add_counters(self, read: Callable[[], Iterable[GaugeSample]]) -> None:
        """Register counters (monotonic totals kept elsewhere, e.g. by breakers) read at scrape time."""
        self.registry.register(_ReadCollector(read, CounterMetricFamily))


def _always(endpoint: str) -> bool:
    return True


def _child(counter: Counter, cache: dict[tuple[str, ...], Counter], *labels: str) -> Counter:
    """The labelled child of ``counter``, looked up once (``labels()`` takes a lock and builds a key)."""
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = counter.labels(*labels)
    return child


class _ReadCollector(Collector):
    def __init__(self, read: Callable[[], Iterable[GaugeSample]],
                 family: type[GaugeMetricFamily] | type[CounterMetricFamily]) -> None:
        self._read = read
        self._family = family

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, help_text, labels, value in self._read():
            family = families.get(name)
            if family is None:
                family = families[name] = self._family(name, help_text, labels=list(labels))
            family.add_metric(list(labels.values()), value)
        return list(families.values())
