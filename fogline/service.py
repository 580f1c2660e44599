"""Run one Fogline process: start it, announce its endpoints, drain on SIGTERM/SIGINT, exit.

A started process writes its endpoints as JSON to ``--ready-file`` (atomically), which is how
``fogline up``, deploy scripts and tests learn the ports it bound when asked for port 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> dict[str, object]:
        """Bind and serve; the endpoints to announce."""

    async def drain(self) -> None:
        """Leave the registry, finish in-flight work within the grace period, stop."""


def write_json_atomic(path: Path, data: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


async def serve(service: Service, ready_file: Path | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    endpoints = await service.start()
    endpoints["pid"] = os.getpid()
    if ready_file is not None:
        write_json_atomic(ready_file, endpoints)
    log.info("serving %s", json.dumps(endpoints))
    await stop.wait()
    log.info("draining")
    await service.drain()
    log.info("stopped")


def run(service: Service, ready_file: Path | None = None) -> int:
    asyncio.run(serve(service, ready_file))
    return 0
