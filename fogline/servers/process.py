"""Run one Fogline process: start it, announce its endpoints, drain on SIGTERM/SIGINT/SIGHUP, exit.

A started process writes its endpoints as JSON to ``--ready-file`` (atomically), which is how
``fogline up``, deploy scripts and tests learn the ports it bound when asked for port 0. Given
``--parent-pid`` (``fogline up`` passes its own), it also drains and exits once that process is
gone, so a killed supervisor leaves no orphan holding its ports.

Tracing is set up here, once, when the ``OTEL_*`` variables configure an exporter
(``fogline.adapters.tracing``): service ``fogline-<tier>`` with the process's id as its instance;
what is left is exported after the drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Protocol

from fogline.adapters import tracing
from fogline.errors import PortInUseError

log = logging.getLogger(__name__)


class Service(Protocol):
    """A process ``run`` can serve: a master or a model server."""

    async def start(self) -> dict[str, object]:
        """Bind and serve; the endpoints to announce."""

    async def drain(self) -> None:
        """Leave the registry, finish in-flight work within the grace period, stop."""


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` so that a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


PARENT_POLL_S = 0.5


async def serve(service: Service, ready_file: Path | None = None, parent_pid: int | None = None) -> None:
    """Start ``service``, announce its endpoints, and drain it once told to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(_parent_gone(parent_pid, stop)) if parent_pid is not None else None
    endpoints = await service.start()
    endpoints["pid"] = os.getpid()
    if ready_file is not None:
        write_json_atomic(ready_file, endpoints)
    log.info("serving %s", json.dumps(endpoints))
    await stop.wait()
    if watch is not None:
        watch.cancel()
    log.info("draining")
    await service.drain()
    log.info("stopped")


async def _parent_gone(parent_pid: int, stop: asyncio.Event) -> None:
    """Set ``stop`` once ``parent_pid`` is no longer this process's parent (it died: we were re-parented)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(PARENT_POLL_S)
    log.warning("parent process %d is gone; stopping", parent_pid)
    stop.set()


def start_tracing(service: Service) -> tracing.OtelSpans | None:
    """Tracing for the process serving ``service``, if the ``OTEL_*`` variables ask for it (None if not):
    service ``fogline-<tier>`` and instance ``<id>`` from its identity, when it has one."""
    identity = getattr(service, "identity", None)
    who = identity() if callable(identity) else None
    name = f"fogline-{who.service}" if who is not None else "fogline"
    return tracing.start_process_tracing(name, who.id if who is not None else "")


def run(service: Service, ready_file: Path | None = None, parent_pid: int | None = None) -> int:
    """Serve until told to stop; 0, or 2 after one line on stderr when a port is taken, the process
    cannot start securely (TLS files, enrolment) or tracing is misconfigured."""
    from fogline.servers.security import SecurityError

    try:
        spans = start_tracing(service)
    except tracing.TracingError as err:
        print(f"fogline: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(service, ready_file, parent_pid))
    except (PortInUseError, SecurityError) as err:
        print(f"fogline: {err}", file=sys.stderr)
        return 2
    finally:
        if spans is not None:
            spans.close()  # NOTE: after the drain: the spans of the last requests go out too
    return 0
