"""Metrics of upstream endpoints follow membership: the series of one that left are removed, and an
attempt that finishes after it left does not bring them back."""

from __future__ import annotations

from prometheus_client import generate_latest

from fogline.adapters.metrics import Metrics


def series_of(metrics: Metrics, endpoint: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if f'endpoint="{endpoint}"' in line]


def test_the_series_of_a_departed_endpoint_are_removed_and_not_created_again() -> None:
    members = {"a", "b"}
    metrics = Metrics("edge", is_member=members.__contains__)
    for endpoint, code in (("a", "OK"), ("a", "UNAVAILABLE"), ("b", "OK")):
        metrics.count_attempt(endpoint, code)
    assert len(series_of(metrics, "a")) == 4  # _total and _created of two codes
    members.discard("a")
    metrics.prune_departed()
    assert series_of(metrics, "a") == [] and len(series_of(metrics, "b")) == 2
    metrics.count_attempt("a", "OK")  # an in-flight request finishing after its endpoint left
    metrics.count_attempt("a", "UNAVAILABLE")
    assert series_of(metrics, "a") == []
    assert "fogline_retries_total 2.0" in generate_latest(metrics.registry).decode()  # not per endpoint


def test_an_endpoint_that_joins_again_counts_from_zero() -> None:
    members = {"a"}
    metrics = Metrics("edge", is_member=members.__contains__)
    metrics.count_attempt("a", "OK")
    members.clear()
    metrics.prune_departed()
    members.add("a")
    metrics.count_attempt("a", "OK")
    assert 'fogline_upstream_requests_total{code="OK",endpoint="a"} 1.0' in series_of(metrics, "a")


def test_without_a_membership_every_endpoint_is_counted_and_kept() -> None:
    metrics = Metrics("device")
    metrics.count_attempt("a", "OK")
    metrics.prune_departed()
    assert 'fogline_upstream_requests_total{code="OK",endpoint="a"} 1.0' in series_of(metrics, "a")
