"""Real Fogline processes for tests (``python -m fogline ...``), always stopped at teardown."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from fogline.local.launch import Launched, launch, wait_ready


class ProcessGroup:
    """Processes started by one test; :meth:`stop_all` kills whatever is left."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[Launched] = []

    def start(self, name: str, *args: str, wait: bool = True) -> Launched:
        proc = launch(name, ["--log-level", "INFO", *args], self.workdir)
        self.processes.append(proc)
        if wait:
            wait_ready(proc)
        return proc

    def cloud(self, name: str = "cloud", *extra: str) -> Launched:
        return self.start(name, "cloud", "--id", name, *extra)

    def edge(self, name: str = "edge", region: str = "test", *extra: str, cloud: Launched | None = None) -> Launched:
        uplink = ("--cloud", cloud.endpoints["control"]) if cloud is not None else ()
        return self.start(name, "edge", "--region", region, "--id", name, *uplink, *extra)

    def device(self, name: str, models: Path, edge: Launched | None = None, region: str = "test",
               *extra: str) -> Launched:
        master = ("--master", edge.endpoints["control"]) if edge is not None else ()
        return self.start(name, "device", "--region", region, "--id", name, "--models", str(models),
                          *master, *extra)

    def worker(self, name: str, models: Path, *extra: str) -> Launched:
        return self.start(name, "worker", "--id", name, "--models", str(models), *extra)

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.process.poll() is None:
                proc.process.kill()
        for proc in self.processes:
            proc.process.wait(10)


def get_json(url: str, *, tls: dict[str, str] | None = None) -> Any:
    """GET ``url`` as JSON; with ``tls`` (a state file's ``tls``: ca, client_cert, client_key) over
    HTTPS with that CA and client certificate."""
    return json.loads(get_text(url, tls=tls))


def get_text(url: str, *, tls: dict[str, str] | None = None) -> str:
    """GET ``url``'s body as text (``tls`` as for :func:`get_json`)."""
    context = None
    if tls:
        url = url.replace("http://", "https://", 1)
        context = ssl.create_default_context(cafile=tls["ca"])
        context.load_cert_chain(tls["client_cert"], tls["client_key"])
    with urllib.request.urlopen(url, timeout=5, context=context) as reply:
        return str(reply.read().decode())


def registered_devices(edge: Launched) -> set[str]:
    return {d["id"] for d in get_json(f"{edge.http}/v1/status")["devices"]}
