"""Capped, jittered exponential backoff between retries of a control-plane loop.

The membership loop, the topology follower and the Consul watches all retry an unreachable peer
the same way::

    backoff = Backoff(initial_s=0.05, max_s=2.0, rng=rng)
    while True:
        try:
            await call()
        except FoglineError:
            await asyncio.sleep(backoff.next_delay())
            continue
        backoff.reset()

Each delay is the current base spread by ``jitter`` either way (so that many children that lost
the same parent do not retry in step), and never longer than ``max_s``; the base grows by
``multiplier`` after every delay, up to ``max_s``, and :meth:`Backoff.reset` starts it over.
"""

from __future__ import annotations

import random


class Backoff:
    """The delays before successive retries: ``initial_s``, growing by ``multiplier`` up to ``max_s``,
    each spread uniformly over ±``jitter`` of itself (a share: 0.5 gives 0.5 to 1.5 times) and capped at ``max_s``."""

    def __init__(self, *, initial_s: float = 0.05, max_s: float = 2.0, multiplier: float = 2.0,
                 jitter: float = 0.5, rng: random.Random | None = None) -> None:
        if initial_s <= 0 or max_s <= 0 or multiplier < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs initial_s > 0, max_s > 0, multiplier >= 1 and 0 <= jitter <= 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._base_s = initial_s

    def next_delay(self) -> float:
        """The delay before the next retry, in seconds; the following one's base grows."""
        spread = 1 - self.jitter + 2 * self.jitter * self._rng.random()
        delay = min(self.max_s, self._base_s * spread)
        self._base_s = min(self.max_s, self._base_s * self.multiplier)
        return delay

    def reset(self) -> None:
        """Start over from ``initial_s`` (after a success)."""
        self._base_s = self.initial_s
