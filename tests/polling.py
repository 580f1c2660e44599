"""Waiting in tests for a condition to come true: one deadline, and a failure that says what was awaited.

- ``wait_for(predicate)``: blocks; for tests without an event loop (processes, files, HTTP).
- ``await until(predicate)``: on the event loop, for a cheap predicate, sync or async (a coroutine
  function, or a callable returning an awaitable); a pending await is cancelled at the deadline.
- ``await poll(predicate)``: on the event loop, for a blocking predicate (HTTP to a process), run in
  a thread so that the loop keeps serving meanwhile.

Each returns the predicate's first truthy value, or raises AssertionError after ``timeout_s`` naming
``what`` (by default the predicate's source line)::

    await until(lambda: "dev-a" in edge.pool.endpoints, 5, "dev-a to register")
"""

from __future__ import annotations

import asyncio
import inspect
import linecache
import os
import time
from collections.abc import Callable
from typing import Any

Predicate = Callable[[], Any]


def wait_for(predicate: Predicate, timeout_s: float = 10.0, what: str | None = None, *,
             interval_s: float = 0.02) -> Any:
    """Call ``predicate`` every ``interval_s`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(timed_out(timeout_s, what, predicate))
        time.sleep(interval_s)
    return value


async def until(predicate: Predicate, timeout_s: float = 10.0, what: str | None = None, *,
                interval_s: float = 0.01) -> Any:
    """Await ``predicate`` (sync or async) every ``interval_s`` until it is truthy; that value."""
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            while not (value := await _called(predicate)):
                await asyncio.sleep(interval_s)
            return value
    except TimeoutError:
        if not deadline.expired():
            raise  # the predicate's own, not the deadline
        raise AssertionError(timed_out(timeout_s, what, predicate)) from None


async def poll(predicate: Predicate, timeout_s: float = 10.0, what: str | None = None, *,
               interval_s: float = 0.05) -> Any:
    """Like ``wait_for``, off the event loop: ``predicate`` blocks, so it runs in a thread. It is
    never interrupted: its last call may end after the deadline, and its truthy answer still counts."""
    deadline = time.monotonic() + timeout_s
    while not (value := await asyncio.to_thread(predicate)):
        if time.monotonic() > deadline:
            raise AssertionError(timed_out(timeout_s, what, predicate))
        await asyncio.sleep(interval_s)
    return value


async def _called(predicate: Predicate) -> Any:
    value = predicate()
    return await value if inspect.isawaitable(value) else value


def timed_out(timeout_s: float, what: str | None, predicate: Predicate) -> str:
    """The failure message: what was awaited, ``what`` or else where the predicate is written."""
    return f"timed out after {timeout_s}s waiting for {what or describe(predicate)}"


def describe(predicate: Predicate) -> str:
    """A lambda's source line (the line awaiting it) or a function's name, and where it is; else its repr."""
    code = getattr(predicate, "__code__", None)
    if code is None:
        return repr(predicate)
    name = getattr(predicate, "__qualname__", code.co_name)
    if code.co_name == "<lambda>":
        name = linecache.getline(code.co_filename, code.co_firstlineno).strip() or name
    return f"{name} ({os.path.relpath(code.co_filename)}:{code.co_firstlineno})"
