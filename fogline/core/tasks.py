"""Stopping the background loops of a process (membership, topology, watches) reliably."""

from __future__ import annotations

import asyncio


async def stop_task(task: asyncio.Task[None] | None, *, poll_s: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has ended.

    NOTE: cancel more than once. On Python 3.11, ``asyncio.wait_for`` inside the task can swallow a
    cancellation that arrives just as the awaited call finishes, and the loop would then go on.
    """
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=poll_s)
