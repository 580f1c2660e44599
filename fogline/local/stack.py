"""``fogline up``: a whole hierarchy on this machine, as separate processes, with sample models:
a cloud master, one GPU worker, and two regions of an edge master with two device nodes each.

Each process is a ``python -m fogline <tier>`` child writing its log under ``<workdir>/logs`` and
its bound endpoints to a ready file; the stack waits for each, prints the endpoints and writes
them, with the process ids, to ``<workdir>/stack.json``, and a Prometheus configuration scraping every
process to ``<workdir>/prometheus.yml`` (:mod:`fogline.local.prometheus`).

Then it supervises (:mod:`fogline.local.supervisor`): a child that dies is restarted on the same ports
with exponential backoff while the rest keep serving, one that crash-loops is left down, and the
state file is rewritten each time. SIGINT, SIGTERM and SIGHUP stop every child (SIGTERM, so they
drain; devices first, then the masters; SIGKILL after a grace period). Every child is started with
``--parent-pid``, so if the stack itself is killed they drain and exit on their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from fogline.adapters.ports import port_free
from fogline.core.security.identity import Identity
from fogline.local.credentials import StackCredentials
from fogline.local.digits import CATALOG_FILE
from fogline.local.launch import LaunchError
from fogline.local.prometheus import CONFIG_FILE, DEFAULT_SCRAPE_INTERVAL_S, PrometheusFiles
from fogline.local.samples import build_sample_repository
from fogline.local.supervisor import Child, ChildState, RestartSettings, Supervisor
from fogline.servers.process import write_json_atomic

START_TIMEOUT_S = 60.0  # the first start builds the sample models
STOP_GRACE_S = 15.0
SUPERVISE_TICK_S = 0.2


class StackError(RuntimeError):
    """The stack could not start; ``port_in_use`` when a child could not listen on its port."""

    def __init__(self, message: str, *, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


DEVICE_MODELS = ("mlp", "cnn", "digits-small")
# cnn on the worker too: a device model with a cloud variant, for overflow and failover.
WORKER_MODELS = ("digits-large", "cnn")


class LocalStack:
    """Cloud master, one GPU worker, and ``regions`` regions of an edge master with ``devices``
    device nodes each. The first region's edge master listens on ``edge_port``/``edge_http_port``,
    the cloud master on ``cloud_port``/``cloud_http_port`` (0 = any free port); the rest on free ports.
    Once up, a :class:`Supervisor` restarts any child that dies."""

    def __init__(self, workdir: Path, *, edge_port: int = 8001, edge_http_port: int = 8000,
                 cloud_port: int = 8011, cloud_http_port: int = 8010, regions: int = 2,
                 devices: int = 2, restart: RestartSettings | None = None, secure: bool = True,
                 scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S) -> None:
        self.workdir = Path(workdir).resolve()
        self.edge_port = edge_port
        self.edge_http_port = edge_http_port
        self.cloud_port = cloud_port
        self.cloud_http_port = cloud_http_port
        self.regions = [f"region-{chr(ord('a') + i)}" for i in range(regions)]
        self.devices = devices
        self.state_file = self.workdir / "stack.json"
        self.supervisor = Supervisor(self.workdir / "run", self.workdir / "logs", settings=restart,
                                     on_change=self._write_state)
        self._stop = threading.Event()
        self._models: Path | None = None
        self.credentials = StackCredentials(self.workdir / "tls") if secure else None
        self.prometheus = PrometheusFiles(self.workdir, scrape_interval_s=scrape_interval_s)

    def _spawn(self, name: str, *args: str, identity: Identity, stop_order: int) -> Child:
        tls = self.credentials.flags(name, identity) if self.credentials else []
        return self.supervisor.spawn(name, [*args, *tls, "--parent-pid", str(os.getpid())], stop_order=stop_order)

    def _admin_flags(self, *, ca: bool) -> list[str]:
        """A master's admin token (and, for the cloud master, the CA it signs enrolments with)."""
        c = self.credentials
        if c is None:
            return []
        return ["--admin-token-file", str(c.admin_token_file), *(["--ca-dir", str(c.ca_dir)] if ca else [])]

    def _wait_ready(self, child: Child) -> dict[str, Any]:
        try:
            return self.supervisor.wait_ready(child, START_TIMEOUT_S, cancelled=self._stop.is_set)
        except LaunchError as err:
            raise StackError(str(err), port_in_use="cannot listen on" in str(err)) from None

    def _build_models(self) -> Path:
        models = build_sample_repository(self.workdir / "models")
        # NOTE: the digits models are trained with torch, which only the worker and this short-lived
        # builder may import: never the process supervising the stack.
        built = subprocess.run([sys.executable, "-m", "fogline.digits", str(models)], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL, check=False)
        if built.returncode != 0:
            raise StackError(f"building the digits models failed:\n{built.stdout}{built.stderr}")
        return models

    def _device_repository(self, device_id: str) -> Path:
        """A device's own model repository (as on a real device: its own disk), holding the sample device
        models; versions it installs from its edge master are added there and kept across restarts."""
        assert self._models is not None
        own = self.workdir / "nodes" / device_id / "models"
        for name in DEVICE_MODELS:
            if not (own / name).exists():
                shutil.copytree(self._models / name, own / name)
        return own

    def fixed_ports(self) -> dict[str, int]:
        """The ports asked for by flag (not 0), by flag."""
        ports = {"--edge-port": self.edge_port, "--edge-http-port": self.edge_http_port,
                 "--cloud-port": self.cloud_port, "--cloud-http-port": self.cloud_http_port}
        return {flag: port for flag, port in ports.items() if port}

    def start(self) -> dict[str, Any]:
        """Start the cloud master, the worker, the edges and their devices; once every one is ready and
        registered where it belongs, write the state file and return what it says."""
        self._models = models = self._build_models()
        if self.credentials is not None:
            self.credentials.prepare()
        cloud = self._wait_ready(self._spawn(
            "cloud", "cloud", "--id", "cloud", "--grpc-port", str(self.cloud_port),
            "--http-port", str(self.cloud_http_port), "--catalog", str(models / CATALOG_FILE),
            "--model-store", str(self.workdir / "registry"), *self._admin_flags(ca=True),
            identity=Identity(service="cloud", id="cloud"), stop_order=2))
        worker = self._spawn("worker-0", "worker", "--id", "worker-0", "--models", str(models),
                             *_only(WORKER_MODELS), "--master", cloud["control"], *self._admin_flags(ca=False),
                             identity=Identity(service="worker", id="worker-0"), stop_order=0)
        edges = {}
        for i, region in enumerate(self.regions):
            ports = ("--grpc-port", str(self.edge_port), "--http-port", str(self.edge_http_port)) if i == 0 else ()
            edges[region] = self._wait_ready(self._spawn(
                f"{region}-edge", "edge", "--region", region, "--id", f"{region}-edge", *ports,
                "--cloud", cloud["control"], *self._admin_flags(ca=False),
                identity=Identity(service="edge", id=f"{region}-edge", region=region), stop_order=1))
        devices = [self._spawn(f"{region}-device-{d}", "device", "--region", region, "--id", f"{region}-device-{d}",
                               "--models", str(self._device_repository(f"{region}-device-{d}")),
                               *_only(DEVICE_MODELS), "--master", edge["control"],
                               *self._admin_flags(ca=False),
                               identity=Identity(service="device", id=f"{region}-device-{d}", region=region),
                               stop_order=0)
                   for region, edge in edges.items() for d in range(self.devices)]
        for child in (*devices, worker):
            self._wait_ready(child)
        for region, edge in edges.items():
            self._wait_member(edge["http"], "devices", {f"{region}-device-{d}" for d in range(self.devices)})
        # NOTE: an edge reports its devices' models in its heartbeats: wait until the cloud has heard them.
        self._wait_member(cloud["http"], "edges", {e["id"] for e in edges.values()}, frozenset(DEVICE_MODELS))
        self._wait_member(cloud["http"], "workers", {worker.endpoints["id"]})
        return self._write_state()

    def state(self) -> dict[str, Any]:
        """What the state file says: every process's endpoints and pid, and which are down."""
        by_name = {c.name: {**c.endpoints, "pid": c.launched.pid, **self._own_tls(c.name)}
                   for c in self.supervisor.children}
        regions = {region: {"edge": by_name.get(f"{region}-edge", {}),
                            "devices": [by_name.get(f"{region}-device-{d}", {}) for d in range(self.devices)]}
                   for region in self.regions}
        down = [c.name for c in self.supervisor.children if c.state is not ChildState.RUNNING]
        return {"workdir": str(self.workdir), "models": str(self._models), "cloud": by_name.get("cloud", {}),
                "worker": by_name.get("worker-0", {}), "regions": regions, "edge": regions[self.regions[0]]["edge"],
                "devices": [d for r in regions.values() for d in r["devices"]], "down": down, "pid": os.getpid(),
                "tls": self.credentials.state() if self.credentials else None}

    def _own_tls(self, name: str) -> dict[str, Any]:
        if self.credentials is None:
            return {}
        files = self.credentials.files(name)
        return {"tls": {"cert": str(files.cert), "key": str(files.key)}}

    def _status_context(self) -> ssl.SSLContext | None:
        """How this stack reads its masters' status: over TLS with the users' client certificate."""
        if self.credentials is None:
            return None
        files = self.credentials.files("client")
        context = ssl.create_default_context(cafile=str(files.ca))
        context.load_cert_chain(files.cert, files.key)
        return context

    def _write_state(self) -> dict[str, Any]:
        state = self.state()
        self.prometheus.update(state)  # NOTE: before the state file, whose appearance says the stack is up
        write_json_atomic(self.state_file, state)
        return state

    def _wait_member(self, http: str, kind: str, ids: set[str], models: frozenset[str] = frozenset()) -> None:
        """Poll a master's /v1/status until its ``kind`` list holds ``ids``, each of them checked (its
        health check passed: it takes traffic) and serving ``models``."""
        deadline = time.monotonic() + START_TIMEOUT_S
        seen: set[str] = set()
        context = self._status_context()
        scheme = "https" if context else "http"
        while time.monotonic() < deadline and not self._stop.is_set():
            with urllib.request.urlopen(f"{scheme}://{http}/v1/status", timeout=2, context=context) as reply:
                seen = {m["id"] for m in json.load(reply)[kind]
                        if m.get("checked", True) and models <= set(m.get("models", ()))}
            if ids <= seen:
                return
            time.sleep(0.05)
        raise StackError(f"{sorted(ids - seen)} did not register with the master at {http} ({kind})")

    def stop(self) -> None:
        """Stop every process, in order, and remove the state file."""
        self.supervisor.stop(STOP_GRACE_S)  # devices and the worker drain first, then edges, then the cloud
        self.state_file.unlink(missing_ok=True)

    def run(self) -> int:
        """Check the ports, start, print the endpoints, supervise until SIGINT, SIGTERM or SIGHUP, stop."""
        taken = [f"{port} ({flag})" for flag, port in self.fixed_ports().items() if not port_free("127.0.0.1", port)]
        if taken:
            print(f"fogline up: port {', '.join(taken)} already in use: is another `fogline up` running? "
                  "(or choose other ports with those flags; 0 = any free port)", file=sys.stderr)
            return 2
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: self._stop.set())
        code = 0
        try:
            _print_state(self.start(), self.state_file)
            while not self._stop.wait(SUPERVISE_TICK_S):
                self.supervisor.tick()
        except StackError as err:
            hint = " Is another `fogline up` running?" if err.port_in_use else ""
            print(f"fogline up failed: {err}{hint}", file=sys.stderr)
            code = 2 if err.port_in_use else 1
        finally:
            print("stopping...", file=sys.stderr)
            self.stop()
        return code


def _only(models: tuple[str, ...]) -> list[str]:
    """``--model`` flags loading just ``models`` from the shared repository."""
    return [arg for name in models for arg in ("--model", name)]


def _print_state(state: dict[str, Any], state_file: Path) -> None:
    cloud, worker = state["cloud"], state["worker"]
    print(f"Fogline local stack is up (models in {state['models']})")
    tls = state.get("tls")
    web = "https" if tls else "http"
    print(f"  cloud master {cloud['id']:<18} grpc {cloud['grpc']:<22} {web}://{cloud['http']}")
    print(f"  GPU worker   {worker['id']:<18} grpc {worker['grpc']:<22} {web}://{worker['http']}")
    for region, members in state["regions"].items():
        edge = members["edge"]
        print(f"  {region}: edge master {edge['id']:<18} grpc {edge['grpc']:<22} {web}://{edge['http']}")
        for d in members["devices"]:
            print(f"  {region}: device node {d['id']:<18} grpc {d['grpc']:<22} {web}://{d['http']}")
    print(f"State file: {state_file}")
    print(f"Prometheus config: {Path(state['workdir']) / CONFIG_FILE}")
    if tls:
        print(f"mTLS on every hop (CA {tls['ca']}); client certificate {tls['client_cert']}, key {tls['client_key']}")
        curl = f"curl --cacert {tls['ca']} https://{cloud['http']}/v1/topology"
    else:
        print("PLAINTEXT (--insecure): anyone who can reach these ports can use and change the fleet")
        curl = f"curl http://{cloud['http']}/v1/topology"
    print(f"Try:  fogline infer --model cnn      (or: {curl})")
    print(f"      fogline calibrate --model digits --data {state['models']}/digits-split.npz --target-rate 0.3")
    print("Ctrl-C stops everything.", flush=True)
