"""Backoff: jittered exponential delays, capped, reset after a success (seeded randomness)."""

from __future__ import annotations

import random

import pytest

from fogline.core.control.backoff import Backoff


class Fixed(random.Random):
    """A "random" source that always returns the same draw."""

    def __init__(self, draw: float) -> None:
        super().__init__()
        self.draw = draw

    def random(self) -> float:
        return self.draw


def test_without_jitter_the_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, jitter=0.0, rng=random.Random(0))
    assert [round(backoff.next_delay(), 6) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


@pytest.mark.parametrize(("draw", "share"), [(0.0, 0.5), (0.5, 1.0), (0.999, 1.499)])
def test_jitter_spreads_each_delay_over_its_share_either_way(draw: float, share: float) -> None:
    backoff = Backoff(initial_s=0.1, max_s=10.0, jitter=0.5, rng=Fixed(draw))
    assert backoff.next_delay() == pytest.approx(0.1 * share)
    assert backoff.next_delay() == pytest.approx(0.2 * share)


def test_a_seeded_rng_gives_the_same_delays_within_their_bounds() -> None:
    delays = [Backoff(initial_s=0.05, max_s=2.0, rng=random.Random(7)) for _ in range(2)]
    first, second = ([b.next_delay() for _ in range(10)] for b in delays)
    assert first == second
    for attempt, delay in enumerate(first):
        base = min(2.0, 0.05 * 2 ** attempt)
        assert 0.5 * base <= delay <= min(2.0, 1.5 * base)


def test_no_delay_is_longer_than_the_cap_even_jittered_up() -> None:
    backoff = Backoff(initial_s=1.0, max_s=1.0, jitter=0.5, rng=Fixed(0.999))
    assert backoff.next_delay() == 1.0


def test_the_same_draws_as_the_loops_used_before() -> None:
    """base * (0.5 + random()): what the membership loop, the topology follower and the Consul watch did."""
    backoff, rng = Backoff(initial_s=0.05, max_s=2.0, rng=random.Random(3)), random.Random(3)
    base = 0.05
    for _ in range(8):
        assert backoff.next_delay() == min(2.0, base * (0.5 + rng.random()))
        base = min(2.0, base * 2)


def test_reset_starts_over_from_the_initial_delay() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, multiplier=3.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(3)] == pytest.approx([0.1, 0.3, 0.9])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)


@pytest.mark.parametrize("options", [{"initial_s": 0.0}, {"max_s": -1.0}, {"multiplier": 0.5}, {"jitter": 1.5}])
def test_nonsense_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**options)
