"""The restart decisions of ``fogline up``'s supervisor, with a fake clock."""

from __future__ import annotations

import pytest

from fogline.local.supervisor import RestartPolicy, RestartSettings, describe_exit, pinned_ports


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(clock: Clock, **overrides: float) -> RestartPolicy:
    return RestartPolicy(RestartSettings(**overrides), clock)  # type: ignore[arg-type]


def test_the_delay_doubles_from_half_a_second_up_to_ten() -> None:
    clock = Clock()
    restarts = policy(clock, crash_loop_exits=100)
    delays = []
    for _ in range(7):
        clock.now += 5  # a short run: no reset, and only a few exits in any minute
        delays.append(restarts.exited())
        restarts.started()
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_five_exits_within_a_minute_leave_the_child_down() -> None:
    clock = Clock()
    restarts = policy(clock)
    delays = []
    for _ in range(5):
        clock.now += 2
        delays.append(restarts.exited())
        restarts.started()
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[4] is None


def test_exits_spread_over_more_than_a_minute_are_not_a_crash_loop() -> None:
    clock = Clock()
    restarts = policy(clock, reset_after_s=1e9)  # no reset: only the window matters here
    for _ in range(10):
        clock.now += 20
        assert restarts.exited() is not None
        restarts.started()


def test_a_minute_of_good_running_resets_the_backoff() -> None:
    clock = Clock()
    restarts = policy(clock)
    for _ in range(3):
        clock.now += 1
        restarts.exited()
        restarts.started()
    clock.now += 61
    assert restarts.exited() == 0.5
    assert restarts.restarts == 1


@pytest.mark.parametrize(("returncode", "said"), [(-9, "signal SIGKILL"), (1, "code 1"), (-15, "signal SIGTERM")])
def test_exits_are_described_by_code_or_signal(returncode: int, said: str) -> None:
    assert describe_exit(returncode) == said


def test_a_restart_is_pinned_to_the_ports_first_bound() -> None:
    endpoints = {"id": "edge", "grpc": "127.0.0.1:4001", "http": "127.0.0.1:4000", "control": "127.0.0.1:4002"}
    assert pinned_ports(endpoints) == ["--grpc-port", "4001", "--http-port", "4000", "--control-port", "4002"]
    assert pinned_ports({"grpc": "[::1]:5"}) == ["--grpc-port", "5"]
