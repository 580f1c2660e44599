"""Traffic history: deltas of cumulative totals, per-second sums per key, series and quantiles."""

from __future__ import annotations

import pytest

from fogline.core.observe.history import Deltas, TrafficHistory, quantile

BOUNDS_S = (0.1, 0.2, 0.4)


# --- Deltas ------------------------------------------------------------------------------------------------


def test_the_first_reading_of_a_key_gives_no_delta_and_later_ones_give_differences() -> None:
    deltas = Deltas()
    assert deltas.delta(("d1", "m"), [10, 1, 5]) is None
    assert deltas.delta(("d1", "m"), [15, 1, 9]) == [5, 0, 4]
    assert deltas.delta(("d1", "m"), [15, 1, 9]) == [0, 0, 0]


def test_a_new_series_gives_its_whole_total_the_first_time() -> None:
    deltas = Deltas()
    assert deltas.delta(("d1", "m"), [4, 1], new=True) == [4, 1]
    assert deltas.delta(("d1", "m"), [6, 1], new=True) == [2, 0]


def test_keys_are_independent() -> None:
    deltas = Deltas()
    deltas.delta(("d1", "m"), [10])
    assert deltas.delta(("d2", "m"), [30]) is None
    assert deltas.delta(("d1", "m"), [12]) == [2]


def test_a_decreased_total_is_a_restart_and_gives_the_new_total() -> None:
    deltas = Deltas()
    deltas.delta(("d1", "m"), [10, 2, 5])
    assert deltas.delta(("d1", "m"), [3, 0, 1]) == [3, 0, 1]
    assert deltas.delta(("d1", "m"), [7, 0, 2]) == [4, 0, 1]


def test_one_decreased_element_is_enough_for_a_restart() -> None:
    deltas = Deltas()
    deltas.delta(("d1", "m"), [10, 2, 5])
    assert deltas.delta(("d1", "m"), [12, 1, 6]) == [12, 1, 6]


def test_a_reading_of_another_length_gives_none_and_is_remembered() -> None:
    deltas = Deltas()
    deltas.delta(("d1", "m"), [10, 2, 5])
    assert deltas.delta(("d1", "m"), [11, 2]) is None
    assert deltas.delta(("d1", "m"), [13, 3]) == [2, 1]


def test_forget_drops_the_keys_of_sources_that_left() -> None:
    deltas = Deltas()
    for key in [("d1", "m"), ("d1", "n"), ("d2", "m"), "plain"]:
        deltas.delta(key, [5])
    deltas.forget({"d2"})
    assert deltas.delta(("d1", "m"), [7]) is None
    assert deltas.delta(("d1", "n"), [7]) is None
    assert deltas.delta(("d2", "m"), [7]) == [2]
    assert deltas.delta("plain", [7]) == [2]  # not a tuple: kept


def test_at_most_max_keys_readings_are_kept_the_least_recently_read_going_first() -> None:
    deltas = Deltas(max_keys=2)
    deltas.delta(("a",), [1])
    deltas.delta(("b",), [1])
    deltas.delta(("a",), [2])  # a read again: b is now the oldest
    deltas.delta(("c",), [1])
    assert deltas.delta(("b",), [5]) is None
    assert deltas.delta(("c",), [4]) == [3]


# --- TrafficHistory ----------------------------------------------------------------------------------------


def history(*, window_s: float = 900.0, step_s: float = 1.0, max_keys: int = 512) -> TrafficHistory:
    return TrafficHistory(bounds_s=BOUNDS_S, window_s=window_s, step_s=step_s, max_keys=max_keys)


KEY = ("traffic", "device", "digits")
OTHER = ("traffic", "edge", "digits")
ROUTE = ("route", "digits", "device-1")


def test_slot_is_the_start_of_the_step() -> None:
    assert history().slot(12.7) == 12.0
    assert history(step_s=5.0).slot(12.7) == 10.0
    assert history(step_s=5.0).slot(15.0) == 15.0


def test_vectors_of_several_sources_in_the_same_second_are_summed() -> None:
    h = history()
    h.add(10.2, KEY, [2, 1, 0, 1, 1, 1])
    h.add(10.9, KEY, [3, 0, 1, 2, 3, 3])
    h.add(11.0, KEY, [1, 0, 1, 1, 1, 1])
    assert h.points() == [(10.0, {KEY: [5, 1, 1, 3, 4, 4]}), (11.0, {KEY: [1, 0, 1, 1, 1, 1]})]


def test_adding_none_adds_nothing() -> None:
    h = history()
    h.add(10.0, KEY, None)
    assert h.points() == []


def test_a_vector_of_another_length_is_not_added_to_a_point() -> None:
    h = history()
    h.add(10.0, KEY, [2, 0, 1, 2, 2, 2])
    h.add(10.0, KEY, [9, 9])
    assert h.points() == [(10.0, {KEY: [2, 0, 1, 2, 2, 2]})]


def test_adding_does_not_alias_the_callers_vector() -> None:
    h = history()
    vector = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    h.add(10.0, KEY, vector)
    h.add(10.0, KEY, vector)
    assert vector == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_points_are_after_since_and_at_or_before_until_oldest_first() -> None:
    h = history()
    for t in (13.0, 10.0, 12.0, 11.0):
        h.add(t, KEY, [t])
    assert [t for t, _ in h.points()] == [10.0, 11.0, 12.0, 13.0]
    assert [t for t, _ in h.points(since=10.0, until=12.0)] == [11.0, 12.0]
    assert [t for t, _ in h.points(since=11.0)] == [12.0, 13.0]
    assert [t for t, _ in h.points(until=11.0)] == [10.0, 11.0]


def test_totals_sum_each_keys_vectors_over_the_range() -> None:
    h = history()
    h.add(10.0, KEY, [1, 0])
    h.add(11.0, KEY, [2, 1])
    h.add(12.0, KEY, [4, 0])
    h.add(12.0, OTHER, [7, 7])
    assert h.totals(since=10.0) == {KEY: [6, 1], OTHER: [7, 7]}
    assert h.totals(since=9.0, until=11.0) == {KEY: [3, 1]}
    assert h.totals(since=12.0) == {}


def test_series_gives_rps_error_rate_and_quantiles_in_ms() -> None:
    h = TrafficHistory(bounds_s=(0.01, 0.1))
    h.add(10.0, KEY, [10, 2, 4, 8, 8])
    line = h.series()[KEY]
    assert line["t"] == [10.0]
    assert line["rps"] == [10.0]
    assert line["error_rate"] == [0.2]
    assert line["p50_ms"] == [pytest.approx(10.0)]   # rank 4 of 8: the top of the first bucket
    assert line["p99_ms"] == [pytest.approx(98.2)]   # rank 7.92: 10 ms + 90 ms * 3.92 / 4


def test_rps_is_requests_per_second_of_the_step() -> None:
    h = TrafficHistory(bounds_s=BOUNDS_S, step_s=2.0)
    h.add(10.0, KEY, [5, 0, 5, 5, 5, 5])
    assert h.series()[KEY]["rps"] == [2.5]


def test_quantiles_are_none_where_no_request_succeeded() -> None:
    h = history()
    h.add(10.0, KEY, [4, 4, 0, 0, 0, 0])
    line = h.series()[KEY]
    assert line["error_rate"] == [1.0]
    assert line["p50_ms"] == [None]
    assert line["p99_ms"] == [None]


def test_a_step_a_key_had_no_traffic_in_is_zero_requests() -> None:
    h = history()
    h.add(10.0, KEY, [3, 0, 3, 3, 3, 3])
    h.add(11.0, OTHER, [1, 0, 1, 1, 1, 1])
    line = h.series()[KEY]
    assert line["t"] == [10.0, 11.0]
    assert line["rps"] == [3.0, 0.0]
    assert line["error_rate"] == [0.0, 0.0]
    assert line["p50_ms"][1] is None
    assert h.series()[OTHER]["rps"] == [0.0, 1.0]


def test_series_respects_since_and_until() -> None:
    h = history()
    for t in (10.0, 11.0, 12.0, 13.0):
        h.add(t, KEY, [1, 0, 1, 1, 1, 1])
    assert h.series(since=10.0, until=12.0)[KEY]["t"] == [11.0, 12.0]


def test_series_of_a_kind_has_only_the_keys_of_that_kind() -> None:
    h = history()
    h.add(10.0, KEY, [1, 0, 1, 1, 1, 1])
    h.add(10.0, OTHER, [1, 0, 1, 1, 1, 1])
    h.add(10.0, ROUTE, [1])
    assert set(h.series(kind="traffic")) == {KEY, OTHER}
    assert h.series(kind="worker") == {}


@pytest.mark.parametrize("key", [ROUTE, KEY])
def test_series_of_a_one_number_vector_does_not_raise(key: tuple[str, str, str]) -> None:
    h = history()
    h.add(10.0, key, [3.0])
    line = h.series(kind=key[0])[key]
    assert line["rps"] == [3.0]
    assert line["p50_ms"] == [None]


def test_trim_drops_the_points_older_than_the_window() -> None:
    h = history(window_s=10.0)
    for t in range(0, 21):
        h.add(float(t), KEY, [1])
    h.trim(20.0)
    assert [t for t, _ in h.points()] == [float(t) for t in range(10, 21)]


def test_at_most_max_keys_keys_are_kept_in_one_second() -> None:
    h = history(max_keys=2)
    h.add(10.0, ("traffic", "device", "a"), [1])
    h.add(10.0, ("traffic", "device", "b"), [1])
    h.add(10.0, ("traffic", "device", "c"), [1])
    h.add(10.0, ("traffic", "device", "a"), [1])  # a key already there still sums
    h.add(11.0, ("traffic", "device", "c"), [1])  # another second has room of its own
    assert h.points() == [(10.0, {("traffic", "device", "a"): [2], ("traffic", "device", "b"): [1]}),
                          (11.0, {("traffic", "device", "c"): [1]})]


# --- quantile ----------------------------------------------------------------------------------------------

CUMULATIVE = [10, 20, 30, 40]  # 10 requests in each of (0, 0.1], (0.1, 0.2], (0.2, 0.4], (0.4, +Inf)


@pytest.mark.parametrize(("q", "expected_s"), [
    (0.1, 0.04),    # rank 4 in the first bucket: its lower bound is 0
    (0.25, 0.1),    # rank 10: the top of the first bucket
    (0.5, 0.2),     # rank 20: the top of the second
    (0.6, 0.28),    # rank 24: 0.2 + 0.2 * 4 / 10
    (0.75, 0.4),    # rank 30: the top of the last finite bucket
    (0.99, 0.4),    # rank 39.6 in +Inf: the highest finite bound
])
def test_quantile_interpolates_within_the_bucket_as_prometheus_does(q: float, expected_s: float) -> None:
    assert quantile(q, BOUNDS_S, CUMULATIVE) == pytest.approx(expected_s)


def test_quantile_skips_empty_buckets() -> None:
    assert quantile(0.5, BOUNDS_S, [0, 0, 8, 8]) == pytest.approx(0.3)  # rank 4 of (0.2, 0.4]'s 8


def test_quantile_of_an_empty_histogram_is_none() -> None:
    assert quantile(0.5, BOUNDS_S, [0, 0, 0, 0]) is None


@pytest.mark.parametrize("cumulative", [[10, 20, 30], [10, 20, 30, 40, 50], []])
def test_quantile_of_buckets_that_do_not_match_the_bounds_is_none(cumulative: list[float]) -> None:
    assert quantile(0.5, BOUNDS_S, cumulative) is None
