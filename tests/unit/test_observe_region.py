"""A region document from an edge, checked: bad shapes refused, bad entries dropped, everything bounded."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fogline.core.observe.region import (
    MAX_EVENTS,
    MAX_NODES,
    MAX_POINTS,
    MAX_VECTOR,
    NAME_MAX_CHARS,
    checked_region,
)
from fogline.errors import InvalidInputError

KEY = ["traffic", "edge", "digits"]
GOOD_POINT = [1.5, KEY, [3, 1, 0, 2, 2]]
GOOD_NODE = {"id": "device-1", "kind": "device", "parent": "edge-1", "region": "eu", "health": "healthy",
             "circuit": "open", "load": {"in_flight": 3, "queue_depth": 2.7}, "versions": {"digits": ["1", "2"]},
             "address": "10.0.0.1:50051"}
GOOD_EVENT = {"t": 5, "kind": "join", "node": "device-1", "text": "device device-1 joined"}


def doc(points: list[Any] | None = None, nodes: list[Any] | None = None, events: list[Any] | None = None,
        **extra: Any) -> dict[str, Any]:
    return {"points": points or [], "nodes": nodes or [], "events": events or [], **extra}


def node(**changes: Any) -> dict[str, Any]:
    return checked_region(doc(nodes=[{**GOOD_NODE, **changes}])).nodes[0]


# --- the document ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, [], "points", 5, True])
def test_a_document_that_is_not_an_object_is_invalid(bad: object) -> None:
    with pytest.raises(InvalidInputError):
        checked_region(bad)


@pytest.mark.parametrize("bad", [
    {},
    {"points": [], "nodes": []},
    {"points": [], "events": []},
    {"nodes": [], "events": []},
    {"points": {}, "nodes": [], "events": []},
    {"points": [], "nodes": "x", "events": []},
    {"points": [], "nodes": [], "events": None},
])
def test_a_document_without_its_three_lists_is_invalid(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        checked_region(bad)


@pytest.mark.parametrize(("ready", "expected"), [(True, True), (False, False), ("true", False), (1, False),
                                                 (None, False)])
def test_ready_only_when_it_is_true(ready: object, expected: bool) -> None:
    assert checked_region(doc(ready=ready)).ready is expected


def test_a_document_without_ready_is_not_ready() -> None:
    assert checked_region(doc()).ready is False


def test_an_empty_document_is_an_empty_region() -> None:
    region = checked_region(doc(ready=True))
    assert (region.points, region.nodes, region.events) == ([], [], [])


# --- points ------------------------------------------------------------------------------------------------


def test_good_points_are_kept_as_floats_in_order() -> None:
    route = [2, ["route", "digits", "device-1"], [4]]
    points = checked_region(doc(points=[GOOD_POINT, route])).points
    assert points == [(1.5, ("traffic", "edge", "digits"), [3.0, 1.0, 0.0, 2.0, 2.0]),
                      (2.0, ("route", "digits", "device-1"), [4.0])]
    assert all(isinstance(v, float) for _, _, vector in points for v in vector)


@pytest.mark.parametrize("tier", ["edge", "device", "worker"])
def test_each_tier_of_a_region_is_a_traffic_key(tier: str) -> None:
    assert len(checked_region(doc(points=[[1, ["traffic", tier, "m"], [1, 0, 1]]])).points) == 1


BAD_POINTS = {
    "a traffic vector without its errors and buckets": [1.5, KEY, [1]],
    "an empty model name": [1.5, ["traffic", "edge", ""], [1, 0, 1]],
    "not a list": "1.5",
    "two elements": [1.5, KEY],
    "four elements": [1.5, KEY, [1], [1]],
    "key not a list": [1.5, "traffic", [1]],
    "key of two": [1.5, ["traffic", "edge"], [1]],
    "vector not a list": [1.5, KEY, "1"],
    "negative t": [-1.0, KEY, [1]],
    "nan t": [math.nan, KEY, [1]],
    "inf t": [math.inf, KEY, [1]],
    "bool t": [True, KEY, [1]],
    "string t": ["1.5", KEY, [1]],
    "negative number": [1.5, KEY, [1, -1]],
    "nan number": [1.5, KEY, [1, math.nan]],
    "inf number": [1.5, KEY, [math.inf]],
    "bool number": [1.5, KEY, [1, False]],
    "string number": [1.5, KEY, ["1"]],
    "null number": [1.5, KEY, [None]],
    "empty vector": [1.5, KEY, []],
    "vector over MAX_VECTOR": [1.5, KEY, [0] * (MAX_VECTOR + 1)],
    "huge vector": [1.5, KEY, [0] * 1_000_000],
    "unknown kind": [1.5, ["spans", "edge", "digits"], [1]],
    "unknown tier": [1.5, ["traffic", "cloud", "digits"], [1]],
    "overlong name": [1.5, ["traffic", "edge", "m" * (NAME_MAX_CHARS + 1)], [1]],
    "newline in name": [1.5, ["route", "digits", "device\n1"], [1]],
    "nul in name": [1.5, ["traffic", "edge", "dig\x00its"], [1]],
    "name not a string": [1.5, ["traffic", "edge", 7], [1]],
}


@pytest.mark.parametrize("bad", list(BAD_POINTS.values()), ids=list(BAD_POINTS))
def test_a_bad_point_is_dropped_and_the_good_ones_kept(bad: Any) -> None:
    points = checked_region(doc(points=[GOOD_POINT, bad, GOOD_POINT])).points
    assert [t for t, _, _ in points] == [1.5, 1.5]


def test_bounds_themselves_are_accepted() -> None:
    good = [0, ["route", "m" * NAME_MAX_CHARS, "r"], [0] * MAX_VECTOR]
    (point,) = checked_region(doc(points=[good])).points
    assert point == (0.0, ("route", "m" * NAME_MAX_CHARS, "r"), [0.0] * MAX_VECTOR)


def test_at_most_max_points_are_kept_the_newest() -> None:
    points = [[float(i), KEY, [1, 0, 1]] for i in range(MAX_POINTS + 5)]
    kept = checked_region(doc(points=points)).points
    assert len(kept) == MAX_POINTS
    assert (kept[0][0], kept[-1][0]) == (5.0, float(MAX_POINTS + 4))


# --- nodes -------------------------------------------------------------------------------------------------


def test_a_good_node_is_kept_with_the_pages_fields() -> None:
    assert node() == {"id": "device-1", "kind": "device", "parent": "edge-1", "region": "eu", "health": "healthy",
                      "circuit": "open", "load": {"in_flight": 3, "queue_depth": 2},
                      "versions": {"digits": ["1", "2"]}, "address": "10.0.0.1:50051"}


def test_a_node_with_only_id_and_kind_gets_defaults() -> None:
    (only,) = checked_region(doc(nodes=[{"id": "w1", "kind": "worker"}])).nodes
    assert only == {"id": "w1", "kind": "worker", "parent": None, "region": None, "health": "unknown",
                    "circuit": None, "load": {"in_flight": 0, "queue_depth": 0}, "versions": {}, "address": ""}


@pytest.mark.parametrize("bad", [
    "device-1",
    ["device-1"],
    {**GOOD_NODE, "kind": "cloud"},
    {**GOOD_NODE, "kind": None},
    {k: v for k, v in GOOD_NODE.items() if k != "id"},
    {**GOOD_NODE, "id": 5},
    {**GOOD_NODE, "id": "x" * (NAME_MAX_CHARS + 1)},
    {**GOOD_NODE, "id": "bad\tid"},
])
def test_a_bad_node_is_dropped_and_the_good_ones_kept(bad: Any) -> None:
    nodes = checked_region(doc(nodes=[GOOD_NODE, bad, {**GOOD_NODE, "id": "device-2"}])).nodes
    assert [n["id"] for n in nodes] == ["device-1", "device-2"]


@pytest.mark.parametrize("health", ["healthy", "unhealthy", "down", "unknown"])
def test_a_known_health_is_kept(health: str) -> None:
    assert node(health=health)["health"] == health


@pytest.mark.parametrize("health", ["exploded", "", 1, None, True])
def test_a_bad_health_is_unknown(health: object) -> None:
    assert node(health=health)["health"] == "unknown"


@pytest.mark.parametrize("circuit", ["closed", "half_open", "open", "ejected"])
def test_a_known_circuit_is_kept(circuit: str) -> None:
    assert node(circuit=circuit)["circuit"] == circuit


@pytest.mark.parametrize("circuit", ["melted", "", 0, False])
def test_a_bad_circuit_is_none(circuit: object) -> None:
    assert node(circuit=circuit)["circuit"] is None


@pytest.mark.parametrize("field", ["kind", "health", "circuit"])
@pytest.mark.parametrize("unhashable", [[], {}])
def test_an_unhashable_field_does_not_break_the_document(field: str, unhashable: object) -> None:
    region = checked_region(doc(nodes=[{**GOOD_NODE, field: unhashable}, {**GOOD_NODE, "id": "device-2"}]))
    assert region.nodes[-1]["id"] == "device-2"


@pytest.mark.parametrize(("load", "expected"), [
    ({"in_flight": 4.9, "queue_depth": 0}, {"in_flight": 4, "queue_depth": 0}),
    ({"in_flight": -3, "queue_depth": math.nan}, {"in_flight": 0, "queue_depth": 0}),
    ({"in_flight": "7", "queue_depth": True}, {"in_flight": 0, "queue_depth": 0}),
    ({"in_flight": math.inf, "queue_depth": None}, {"in_flight": 0, "queue_depth": 0}),
    ({"in_flight": 2, "other": 9}, {"in_flight": 2, "queue_depth": 0}),
    ("lots", {"in_flight": 0, "queue_depth": 0}),
    ([1, 2], {"in_flight": 0, "queue_depth": 0}),
])
def test_load_is_coerced_to_two_non_negative_ints(load: object, expected: dict[str, int]) -> None:
    assert node(load=load)["load"] == expected


def test_bad_optional_names_are_none_or_empty() -> None:
    checked = node(parent=["edge-1"], region="r" * (NAME_MAX_CHARS + 1), address="\x1b[31m")
    assert (checked["parent"], checked["region"], checked["address"]) == (None, None, "")


def test_versions_keep_only_good_names() -> None:
    versions = {"digits": ["1", 2, "x" * (NAME_MAX_CHARS + 1), "2\n", "3"], "bad\nmodel": ["1"], "text": "1",
                "empty": []}
    assert node(versions=versions)["versions"] == {"digits": ["1", "3"], "empty": []}


@pytest.mark.parametrize("versions", [["digits"], "digits", None, 5])
def test_versions_not_an_object_are_empty(versions: object) -> None:
    assert node(versions=versions)["versions"] == {}


def test_versions_are_bounded() -> None:
    versions = {f"m{i}": [str(v) for v in range(100)] for i in range(100)}
    checked = node(versions=versions)["versions"]
    assert len(checked) == 64
    assert all(len(vs) == 64 for vs in checked.values())
    assert checked["m0"] == [str(v) for v in range(64)]


def test_at_most_max_nodes_are_kept_the_first() -> None:
    nodes = [{"id": f"d{i}", "kind": "device"} for i in range(MAX_NODES + 10)]
    kept = checked_region(doc(nodes=nodes)).nodes
    assert len(kept) == MAX_NODES
    assert (kept[0]["id"], kept[-1]["id"]) == ("d0", f"d{MAX_NODES - 1}")


# --- events ------------------------------------------------------------------------------------------------


def test_a_good_event_is_kept() -> None:
    (event,) = checked_region(doc(events=[GOOD_EVENT])).events
    assert event == {"t": 5.0, "kind": "join", "node": "device-1", "text": "device device-1 joined"}
    assert isinstance(event["t"], float)


@pytest.mark.parametrize("kind", ["join", "leave", "restart", "breaker", "rollout", "gate", "start", "health"])
def test_each_known_kind_of_event_is_kept(kind: str) -> None:
    assert checked_region(doc(events=[{**GOOD_EVENT, "kind": kind}])).events[0]["kind"] == kind


@pytest.mark.parametrize("bad", [
    "join",
    {**GOOD_EVENT, "kind": "explode"},
    {**GOOD_EVENT, "kind": None},
    {k: v for k, v in GOOD_EVENT.items() if k != "kind"},
    {**GOOD_EVENT, "t": -1},
    {**GOOD_EVENT, "t": math.nan},
    {**GOOD_EVENT, "t": "5"},
    {**GOOD_EVENT, "t": True},
    {**GOOD_EVENT, "node": None},
    {**GOOD_EVENT, "node": "x" * (NAME_MAX_CHARS + 1)},
    {**GOOD_EVENT, "node": "a\nb"},
    {**GOOD_EVENT, "text": None},
    {**GOOD_EVENT, "text": ["joined"]},
])
def test_a_bad_event_is_dropped_and_the_good_ones_kept(bad: Any) -> None:
    events = checked_region(doc(events=[GOOD_EVENT, bad, {**GOOD_EVENT, "t": 6}])).events
    assert [e["t"] for e in events] == [5.0, 6.0]


@pytest.mark.parametrize("unhashable", [[], {}])
def test_an_unhashable_event_kind_does_not_break_the_document(unhashable: object) -> None:
    events = checked_region(doc(events=[{**GOOD_EVENT, "kind": unhashable}, GOOD_EVENT])).events
    assert events == [{**GOOD_EVENT, "t": 5.0}]


def test_an_events_text_is_cut_to_300_characters() -> None:
    (event,) = checked_region(doc(events=[{**GOOD_EVENT, "text": "x" * 10_000}])).events
    assert len(event["text"]) == 300
    assert event["text"].endswith("…")
    (exact,) = checked_region(doc(events=[{**GOOD_EVENT, "text": "y" * 300}])).events
    assert exact["text"] == "y" * 300


def test_at_most_max_events_are_kept_the_newest() -> None:
    events = [{**GOOD_EVENT, "t": i} for i in range(MAX_EVENTS + 10)]
    kept = checked_region(doc(events=events)).events
    assert len(kept) == MAX_EVENTS
    assert (kept[0]["t"], kept[-1]["t"]) == (10.0, float(MAX_EVENTS + 9))
