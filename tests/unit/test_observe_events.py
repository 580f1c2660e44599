"""The event log and its watchers: numbered bounded events, joins/leaves/restarts, changes per key."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from fogline.core.observe.events import (
    BREAKER,
    EVENT_TEXT_MAX_CHARS,
    JOIN,
    LEAVE,
    RESTART,
    ChangeWatch,
    EventLog,
    MembershipWatch,
)


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def said(log: EventLog) -> list[tuple[str, str, str]]:
    return [(e.kind, e.node, e.text) for e in log.since()]


# --- EventLog ----------------------------------------------------------------------------------------------


def test_events_are_numbered_from_one_and_stamped_by_the_clock() -> None:
    clock = Clock(5.0)
    log = EventLog(clock=clock)
    first = log.add(JOIN, "d1", "member d1 joined")
    clock.now = 6.5
    second = log.add(LEAVE, "d1", "member d1 left")
    assert (first.seq, first.t, second.seq, second.t) == (1, 5.0, 2, 6.5)
    assert second.to_json() == {"seq": 2, "t": 6.5, "kind": LEAVE, "node": "d1", "text": "member d1 left"}
    assert log.since() == [first, second]


def test_since_gives_the_events_strictly_after_t() -> None:
    clock = Clock()
    log = EventLog(clock=clock)
    for t in (1.0, 2.0, 3.0):
        clock.now = t
        log.add(JOIN, "d1", f"at {t}")
    assert [e.text for e in log.since(2.0)] == ["at 3.0"]
    assert [e.text for e in log.since(0.5)] == ["at 1.0", "at 2.0", "at 3.0"]
    assert log.since(3.0) == []


def test_limit_keeps_the_newest_events() -> None:
    log = EventLog(clock=Clock())
    for i in range(5):
        log.add(JOIN, "d1", str(i))
    assert [e.seq for e in log.since(limit=2)] == [4, 5]


def test_a_limit_of_zero_gives_no_events() -> None:
    log = EventLog(clock=Clock())
    log.add(JOIN, "d1", "joined")
    assert log.since(limit=0) == []


def test_the_log_keeps_the_last_max_events_and_keeps_numbering() -> None:
    log = EventLog(3, clock=Clock())
    for i in range(5):
        log.add(JOIN, "d1", str(i))
    assert [e.seq for e in log.since()] == [3, 4, 5]
    assert log.add(JOIN, "d1", "next").seq == 6


def test_text_and_node_are_cut_to_bounds() -> None:
    log = EventLog(clock=Clock())
    event = log.add(JOIN, "n" * 500, "x" * 5000)
    assert len(event.text) == EVENT_TEXT_MAX_CHARS
    assert event.text.startswith("x" * (EVENT_TEXT_MAX_CHARS - 1))
    assert event.text.endswith("…")
    assert len(event.node) == 200
    exact = log.add(JOIN, "n" * 200, "y" * EVENT_TEXT_MAX_CHARS)
    assert (exact.node, exact.text) == ("n" * 200, "y" * EVENT_TEXT_MAX_CHARS)


# --- MembershipWatch ---------------------------------------------------------------------------------------


def watch(ghost_s: float = 120.0, what: str = "member") -> tuple[EventLog, MembershipWatch]:
    log = EventLog(clock=Clock())
    return log, MembershipWatch(log, ghost_s=ghost_s, what=what)


def test_the_first_view_only_primes_the_watch() -> None:
    log, members = watch()
    members.observe(0.0, {"d1": 100.0, "d2": None})
    assert said(log) == []


def test_new_members_join_and_missing_ones_leave() -> None:
    log, members = watch(what="device")
    members.observe(0.0, {"d1": 100.0, "d2": None})
    members.observe(10.0, {"d1": 100.0, "d2": None, "d3": 5.0})
    assert said(log) == [(JOIN, "d3", "device d3 joined")]
    members.observe(20.0, {"d1": 100.0})
    assert said(log)[1:] == [(LEAVE, "d2", "device d2 left"), (LEAVE, "d3", "device d3 left")]


def test_a_view_without_changes_logs_nothing() -> None:
    log, members = watch()
    members.observe(0.0, {"d1": 100.0})
    members.observe(10.0, {"d1": 100.0})
    members.observe(20.0, {"d1": None})
    assert said(log) == []


def test_a_member_that_comes_back_joined_again_after_its_absence() -> None:
    log, members = watch()
    members.observe(0.0, {"d1": 100.0, "d2": 100.0})
    members.observe(20.0, {"d1": 100.0})
    members.observe(50.0, {"d1": 100.0, "d2": 140.0})
    assert said(log) == [(LEAVE, "d2", "member d2 left"), (JOIN, "d2", "member d2 joined again after 30 s")]


def test_a_later_process_start_is_a_restart_without_leave_or_join() -> None:
    log, members = watch()
    members.observe(0.0, {"d1": 100.0})
    members.observe(10.0, {"d1": 100.4})  # the same start, read with jitter
    assert said(log) == []
    members.observe(20.0, {"d1": 200.0})
    assert said(log) == [(RESTART, "d1", "member d1 restarted")]


def test_a_restart_is_measured_from_the_last_known_start_time() -> None:
    log, members = watch()
    members.observe(0.0, {"d1": None})
    members.observe(10.0, {"d1": 100.0})  # first known start: not a restart
    members.observe(20.0, {"d1": None})   # unknown now: the last known stays
    members.observe(30.0, {"d1": 100.0})
    assert said(log) == []
    members.observe(40.0, {"d1": 300.0})
    assert said(log) == [(RESTART, "d1", "member d1 restarted")]


def test_departed_lists_who_left_within_ghost_s() -> None:
    _, members = watch(ghost_s=60.0)
    members.observe(0.0, {"d1": 100.0, "d2": 100.0})
    members.observe(10.0, {"d1": 100.0})
    assert members.departed(10.0) == {"d2": 10.0}
    assert members.departed(70.0) == {"d2": 10.0}
    assert members.departed(70.5) == {}


def test_departed_forgets_a_member_that_comes_back() -> None:
    _, members = watch()
    members.observe(0.0, {"d1": 100.0})
    members.observe(10.0, {})
    members.observe(20.0, {"d1": 100.0})
    assert members.departed(20.0) == {}


def test_a_member_gone_longer_than_ghost_s_is_forgotten_and_simply_joins() -> None:
    log, members = watch(ghost_s=60.0)
    members.observe(0.0, {"d1": 100.0})
    members.observe(10.0, {})
    members.observe(100.0, {})  # past ghost_s: forgotten
    assert members.departed(10.0) == {}
    members.observe(110.0, {"d1": 200.0})
    assert said(log)[-1] == (JOIN, "d1", "member d1 joined")


# --- ChangeWatch -------------------------------------------------------------------------------------------


def arrow(key: Hashable, before: Any, after: Any) -> tuple[str, str] | None:
    if (before, after) == ("closed", "half_open"):
        return None  # not worth an event
    return str(key), f"{before} -> {after}"


def changes() -> tuple[EventLog, ChangeWatch]:
    log = EventLog(clock=Clock())
    return log, ChangeWatch(log, BREAKER, arrow)


def test_a_keys_first_value_is_no_event() -> None:
    log, watch_ = changes()
    watch_.observe({"d1": "closed", "d2": "open"})
    assert said(log) == []


def test_a_change_is_an_event_in_describes_words() -> None:
    log, watch_ = changes()
    watch_.observe({"d1": "closed", "d2": "closed"})
    watch_.observe({"d1": "open", "d2": "closed"})
    watch_.observe({"d1": "open", "d2": "closed"})
    assert said(log) == [(BREAKER, "d1", "closed -> open")]


def test_a_change_describe_declines_is_no_event_but_is_remembered() -> None:
    log, watch_ = changes()
    watch_.observe({"d1": "closed"})
    watch_.observe({"d1": "half_open"})
    assert said(log) == []
    watch_.observe({"d1": "open"})
    assert said(log) == [(BREAKER, "d1", "half_open -> open")]


def test_a_key_not_given_is_forgotten_and_starts_fresh() -> None:
    log, watch_ = changes()
    watch_.observe({"d1": "open"})
    watch_.observe({})
    watch_.observe({"d1": "closed"})
    assert said(log) == []
