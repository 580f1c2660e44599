"""Supervision of ``fogline up``'s children: restart what dies, leave down what crash-loops.

:class:`RestartPolicy` decides (plain Python, clock injected); :class:`Supervisor` applies it to
launched processes, one :meth:`Supervisor.tick` at a time, so the caller owns the loop::

    supervisor = Supervisor(run_dir, log_dir, on_change=write_state)
    cloud = supervisor.spawn("cloud", ["cloud", "--id", "cloud"], stop_order=2)
    supervisor.wait_ready(cloud, timeout_s=60)
    while not stopping:
        supervisor.tick()
    supervisor.stop(grace_s=15)

A restarted child gets the same id and flags, and the ports it bound the first time, so whoever
was told its address (its own children, the state file) can still reach it.
"""

from __future__ import annotations

import enum
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogline.local.launch import Launched, LaunchError, launch, wait_ready

PORT_FLAGS = {"grpc": "--grpc-port", "http": "--http-port", "control": "--control-port"}
"""The endpoint a child announces → the flag that pins its port on a restart."""


@dataclass(frozen=True, kw_only=True)
class RestartSettings:
    """How soon a dead child is restarted, and when it is left down."""

    initial_backoff_s: float = 0.5
    """Delay before the first restart; it doubles with each further one."""
    max_backoff_s: float = 10.0
    """The longest delay between restarts."""
    reset_after_s: float = 60.0
    """A child that ran this long before dying starts again from the initial delay."""
    crash_loop_exits: int = 5
    """This many exits within ``crash_loop_window_s`` leave the child down."""
    crash_loop_window_s: float = 60.0
    start_timeout_s: float = 60.0
    """A restarted child not ready after this long is killed, which counts as an exit."""


class RestartPolicy:
    """When to restart one child after it exits: a delay in seconds, or None to leave it down."""

    def __init__(self, settings: RestartSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._exits: deque[float] = deque()
        self._started_at = clock()
        self.restarts = 0
        """Restarts since the last reset: the attempt number of the next one, less one."""

    def started(self) -> None:
        """The child is up again: the time its run is counted from, for ``reset_after_s``."""
        self._started_at = self._clock()

    def exited(self) -> float | None:
        """The child exited: seconds to wait before restarting it, or None if it is crash-looping."""
        s, now = self.settings, self._clock()
        if now - self._started_at >= s.reset_after_s:
            self.restarts = 0
        self._exits.append(now)
        while self._exits and now - self._exits[0] > s.crash_loop_window_s:
            self._exits.popleft()
        if len(self._exits) >= s.crash_loop_exits:
            return None
        delay = min(s.initial_backoff_s * 2 ** self.restarts, s.max_backoff_s)
        self.restarts += 1
        return delay


class ChildState(enum.Enum):
    """Where a supervised child stands: starting until ready, running, waiting to restart, or down."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    DOWN = "down"
    """Crash-looped: left down for good."""


@dataclass
class Child:
    """One supervised process: what it was started with, and where it stands now."""

    name: str
    args: list[str]
    stop_order: int
    """Children stop in rising order: devices first, then the masters."""
    launched: Launched
    policy: RestartPolicy
    state: ChildState = ChildState.STARTING
    restart_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)

    @property
    def endpoints(self) -> dict[str, Any]:
        """The endpoints it announced in its ready file once ready (empty before)."""
        return self.launched.endpoints


def describe_exit(returncode: int) -> str:
    """``code 1`` or ``signal SIGKILL``."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


class Supervisor:
    """Starts children, restarts them by :class:`RestartPolicy`, and stops them in order.

    ``on_change`` runs after a child's endpoints or state changed (it rewrote the state file in
    ``fogline up``); ``say`` prints one line per event."""

    def __init__(self, run_dir: Path, log_dir: Path, *, settings: RestartSettings | None = None,
                 on_change: Callable[[], object] = lambda: None,
                 say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run_dir, self.log_dir = run_dir, log_dir
        self.settings = settings or RestartSettings()
        self.children: list[Child] = []
        self._on_change, self._say, self._clock = on_change, say, clock

    def spawn(self, name: str, args: Sequence[str], *, stop_order: int) -> Child:
        """Start ``python -m fogline ARGS`` as the child ``name`` and supervise it from now on."""
        child = Child(name, list(args), stop_order, self._launch(name, args),
                      RestartPolicy(self.settings, self._clock), started_at=self._clock())
        self.children.append(child)
        return child

    def _launch(self, name: str, args: Sequence[str]) -> Launched:
        return launch(name, args, self.run_dir, log_dir=self.log_dir)

    def wait_ready(self, child: Child, timeout_s: float, cancelled: Callable[[], bool] = lambda: False
                   ) -> dict[str, Any]:
        """Block until ``child`` first announces its endpoints (raises :class:`LaunchError`); its
        ports are pinned for any restart."""
        endpoints = wait_ready(child.launched, timeout_s, cancelled)
        child.args += pinned_ports(endpoints)
        child.state = ChildState.RUNNING
        return endpoints

    def tick(self) -> None:
        """Look at every child once: note exits, restart those whose backoff is over, adopt those
        that became ready."""
        for child in self.children:
            {ChildState.STARTING: self._check_starting, ChildState.RUNNING: self._check_running,
             ChildState.BACKOFF: self._check_backoff}.get(child.state, lambda _: None)(child)

    def _check_running(self, child: Child) -> None:
        if child.launched.process.poll() is not None:
            self._exited(child)

    def _check_starting(self, child: Child) -> None:
        launched = child.launched
        if launched.process.poll() is not None:
            self._exited(child)
        elif launched.ready_file.is_file():
            wait_ready(launched, 0)
            child.state = ChildState.RUNNING
            self._say(f"fogline up: {child.name} is back (pid {launched.pid})")
            self._on_change()
        elif self._clock() - child.started_at > self.settings.start_timeout_s:
            self._say(f"fogline up: {child.name} not ready after {self.settings.start_timeout_s:.0f} s; killing it")
            launched.process.kill()

    def _check_backoff(self, child: Child) -> None:
        if self._clock() >= child.restart_at:
            child.launched = self._launch(child.name, child.args)
            child.policy.started()
            child.started_at = self._clock()
            child.state = ChildState.STARTING

    def _exited(self, child: Child) -> None:
        launched = child.launched
        how = describe_exit(launched.process.wait())
        delay = child.policy.exited()
        if delay is None:
            s = self.settings
            child.state = ChildState.DOWN
            self._say(f"fogline up: {child.name} exited with {how}, {s.crash_loop_exits} exits within "
                      f"{s.crash_loop_window_s:.0f} s: leaving it down. Log: {launched.log_file}")
        else:
            child.state, child.restart_at = ChildState.BACKOFF, self._clock() + delay
            self._say(f"fogline up: {child.name} exited with {how}; restart {child.policy.restarts} "
                      f"in {delay:.1f} s. Log: {launched.log_file}")
        self._on_change()

    def stop(self, grace_s: float) -> None:
        """SIGTERM the children one stop order at a time, each given ``grace_s`` to drain before
        SIGKILL."""
        for order in sorted({c.stop_order for c in self.children}):
            batch = [c.launched.process for c in self.children if c.stop_order == order]
            for process in batch:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for process in batch:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def pinned_ports(endpoints: dict[str, Any]) -> list[str]:
    """The flags that bind a restart to the ports of ``endpoints`` (argparse keeps the last one)."""
    return [arg for key, flag in PORT_FLAGS.items() if key in endpoints
            for arg in (flag, str(endpoints[key]).rsplit(":", 1)[1])]


__all__ = ["ChildState", "LaunchError", "RestartPolicy", "RestartSettings", "Supervisor", "describe_exit"]
