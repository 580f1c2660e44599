"""``deploy/grafana/fogline.json``: a Grafana dashboard that imports as is (a Prometheus datasource variable,
``tier`` and ``model`` variables) and whose every query names only metrics Fogline exports.

The names are checked here against the metric names written in Fogline's code; the Prometheus integration
test (``tests/integration/test_prometheus.py``) checks each against a real scrape of ``fogline up``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "fogline.json"
CODE = ("fogline", "cloud_master", "edge_master", "device_node")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SERIES_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
"""What the Prometheus text format appends to a counter's or a histogram's name."""

_METRIC = re.compile(r"\bfogline_[a-z0-9_]+\b")
_LITERAL = re.compile(r"[\"'](fogline_[a-z0-9_]+)[\"']")


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries (rows excluded), those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [t["expr"] for p in panels(dashboard) for t in p["targets"]]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    """The queries of the template variables (Grafana's ``label_values(metric, label)``)."""
    return [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def dashboard_metrics() -> set[str]:
    """The metric names (as scraped: ``_total``, ``_bucket``...) the dashboard's queries use."""
    dashboard = load_dashboard()
    return {name for expr in exprs(dashboard) + variable_queries(dashboard) for name in _METRIC.findall(expr)}


def metric_names_in_code() -> set[str]:
    """Every ``"fogline_..."`` name written in Fogline's packages: the metrics it registers and reads."""
    return {name for package in CODE for path in (ROOT / package).rglob("*.py")
            for name in _LITERAL.findall(path.read_text())}


def base_name(series: str, known: set[str]) -> str:
    """The registered name behind a scraped one (``fogline_requests_total`` -> ``fogline_requests``)."""
    if series in known:
        return series
    for suffix in SERIES_SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in known:
            return series.removesuffix(suffix)
    return ""


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"] == "Fogline"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("tier", "model"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"] == DATASOURCE
        assert variables[name]["includeAll"] and variables[name]["multi"]
    assert "fogline_requests_total, tier)" in variables["tier"]["definition"]


def test_every_panel_queries_the_datasource_variable_and_fits_the_grid() -> None:
    dashboard = load_dashboard()
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in [*rows, *panels(dashboard)]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"] and panel["title"] and panel["description"]
        assert all(t["datasource"] == DATASOURCE and t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert [t["refId"] for t in panel["targets"]] == sorted({t["refId"] for t in panel["targets"]})
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]


def test_every_expression_is_balanced_and_names_a_fogline_metric() -> None:
    dashboard = load_dashboard()
    for expr in exprs(dashboard) + variable_queries(dashboard):
        assert _METRIC.search(expr), expr
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), expr


def test_every_metric_the_dashboard_uses_is_one_fogline_exports() -> None:
    known = metric_names_in_code()
    unknown = sorted(m for m in dashboard_metrics() if not base_name(m, known))
    assert not unknown, f"the dashboard queries metrics no Fogline code registers: {unknown}"


def test_the_dashboard_covers_traffic_latency_breakers_routes_queues_batches_and_rollouts() -> None:
    used = dashboard_metrics()
    assert {"fogline_requests_total", "fogline_request_duration_seconds_bucket", "fogline_breaker_state",
            "fogline_routes_total", "fogline_queue_depth", "fogline_batch_size_bucket",
            "fogline_rollout_percent"} <= used
    latency = " ".join(e for e in exprs(load_dashboard()) if "fogline_request_duration_seconds_bucket" in e)
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}," in latency
