"""A process that runs models itself — a device node or a GPU worker — wired once.

Model repository -> one runtime per model -> a :class:`DynamicBatcher` each -> :class:`LocalDataPlane`,
served over V2 gRPC (with ``grpc.health.v1``) and REST status; membership in a parent master when
one is given; draining. The tiers differ only in their identity and in how a model is loaded
(``load_runtime``), so this module imports no execution library itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogline.adapters.consul.discovery import ConsulDiscovery
from fogline.adapters.grpc.control import GrpcControlClient
from fogline.adapters.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, bind, create_server, set_serving
from fogline.adapters.grpc.v2 import LocalBackend, v2_handler
from fogline.adapters.http import start_http
from fogline.adapters.metrics import GaugeSample, Metrics
from fogline.adapters.runtime import Runtime
from fogline.core.control.membership import MembershipLoop
from fogline.core.control.registry import Load, Member
from fogline.core.serving.batching import DynamicBatcher
from fogline.core.serving.dataplane import LocalDataPlane, ServedModel
from fogline.core.serving.repository import ModelConfig, load_repository

log = logging.getLogger(__name__)

LoadRuntime = Callable[[ModelConfig], Runtime]


@dataclass(kw_only=True)
class ModelServerSettings:
    model_repository: Path
    """Directory with <model>/config.toml and <model>/<version>/<model file>."""
    node_id: str = field(default_factory=lambda: f"node-{socket.gethostname()}")
    """Unique id among its master's members; the master routes and reports by it."""
    region: str = "default"
    """Region this process serves; reported to its master and in status."""
    models: tuple[str, ...] | None = None
    """Models to load from the repository (default: all)."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    advertise_host: str | None = None
    """Address peers use to reach this process (default: host)."""
    grpc_port: int = 0
    """V2 inference port (0 = any free port; the bound one is in the endpoints)."""
    http_port: int = 0
    """REST status port (0 = any free port)."""
    master: str | None = None
    """host:port of the parent master's control plane; None runs stand-alone."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest request or response accepted; larger ones get RESOURCE_EXHAUSTED."""
    drain_grace_s: float = 10.0
    """On SIGTERM, how long in-flight requests may take to finish."""
    consul: ConsulDiscovery | None = None
    """Register with Consul instead of a parent master (``master`` is then not needed)."""
    fault_delay_s: float = 0.0
    """Testing aid for chaos suites and benchmarks: hold every inference this long before running
    it, as a slow node would. Leave at 0 in production."""


class ModelServer:
    """Serves the models of a repository with dynamic batching over V2 gRPC and REST status.

    ``tier`` tags every response (``fogline.tier``) and the status; ``service`` is the name it
    registers under with its master; ``server_name`` answers V2 ServerMetadata.
    """

    def __init__(self, settings: ModelServerSettings, *, tier: str, service: str, server_name: str,
                 load_runtime: LoadRuntime) -> None:
        self.settings = settings
        self.tier = tier
        self.service = service
        self.server_name = server_name
        self._load_runtime = load_runtime
        self.metrics = Metrics(tier)
        self.endpoints: dict[str, Any] = {}
        self.dataplane: LocalDataPlane | None = None
        self.membership: MembershipLoop | None = None

    async def start(self) -> dict[str, Any]:
        s = self.settings
        self.dataplane = dataplane = LocalDataPlane(s.node_id, self.tier, self._load_models(),
                                                    fault_delay_s=s.fault_delay_s)
        self.metrics.add_gauges(self._gauges)

        self._server, self._health = create_server(
            v2_handler(LocalBackend(dataplane, self.server_name), self.metrics),
            max_message_bytes=s.max_message_bytes)
        grpc_port = bind(self._server, s.host, s.grpc_port)
        self._http, http_port = await start_http(self, self.metrics, s.host, s.http_port)  # every port bound first
        await self._server.start()
        await set_serving(self._health, True)
        advertise = s.advertise_host or s.host
        self.endpoints = {"id": s.node_id, "region": s.region, "grpc": f"{advertise}:{grpc_port}",
                          "http": f"{advertise}:{http_port}"}
        if s.consul is not None:
            self.membership = MembershipLoop(s.consul.control_plane(), self._member, self._load)
            self.membership.start()
        elif s.master:
            self.membership = MembershipLoop(GrpcControlClient(s.master), self._member, self._load)
            self.membership.start()
        return dict(self.endpoints)

    def _load_models(self) -> dict[str, ServedModel]:
        configs = load_repository(self.settings.model_repository, self.settings.models)
        runtimes = [(config, self._load_runtime(config)) for config in configs]
        self._executor = ThreadPoolExecutor(max_workers=sum(c.batching.instances for c in configs),
                                            thread_name_prefix="model-run")
        served = {}
        for config, runtime in runtimes:
            batcher = DynamicBatcher(config.name, runtime.run, config.batching, executor=self._executor,
                                     on_batch=self.metrics.batch_observer(config.name))
            served[config.name] = ServedModel(runtime.spec, batcher, runtime.providers)
            log.info("loaded %s v%s on %s", config.name, config.version, runtime.providers)
        return served

    def _member(self) -> Member:
        assert self.dataplane is not None
        return Member(id=self.settings.node_id, service=self.service, address=self.endpoints["grpc"],
                      region=self.settings.region, models=frozenset(self.dataplane.models),
                      capacity=sum(m.batcher.settings.instances * max(m.spec.max_batch_size, 1)
                                   for m in self.dataplane.models.values()),
                      http_address=self.endpoints["http"])

    def _load(self) -> Load:
        assert self.dataplane is not None
        running, queued = self.dataplane.load()
        return Load(in_flight=running, queue_depth=queued)

    def _gauges(self) -> list[GaugeSample]:
        assert self.dataplane is not None
        out: list[GaugeSample] = []
        for name, m in self.dataplane.models.items():
            out.append(("fogline_queue_depth", "Requests waiting for a batch", {"model": name},
                        m.batcher.queue_depth))
            out.append(("fogline_in_flight", "Requests in running batches", {"model": name},
                        m.batcher.in_flight))
        return out

    def readiness(self) -> tuple[bool, str]:
        if self.dataplane is None or not self.dataplane.ready():
            return False, "draining" if self.dataplane is not None else "starting"
        if self.membership is not None and not self.membership.registered.is_set():
            where = self.settings.consul.consul.url if self.settings.consul else self.settings.master
            return False, f"not registered with {'Consul' if self.settings.consul else 'its master'} at {where}"
        return True, ""

    def status(self) -> dict[str, Any]:
        assert self.dataplane is not None
        running, queued = self.dataplane.load()
        return {
            "tier": self.tier,
            **self.endpoints,
            "ready": self.readiness()[0],
            "master": self.settings.master,
            "discovery": self.settings.consul.describe() if self.settings.consul else {"kind": "embedded"},
            "registered": self.membership.registered.is_set() if self.membership else None,
            "load": {"in_flight": running, "queue_depth": queued},
            "models": self.dataplane.status(),
            **self.extra_status(),
        }

    def extra_status(self) -> dict[str, Any]:
        """Fields a tier adds to its ``/v1/status`` (none here)."""
        return {}

    async def drain(self) -> None:
        assert self.dataplane is not None
        self.dataplane.draining = True
        if self.membership is not None:
            await self.membership.leave()  # the master stops routing here first
        await set_serving(self._health, False)
        await self._server.stop(self.settings.drain_grace_s)  # refuse new calls, finish running ones
        await self._http.cleanup()
        if self.membership is not None:
            await self.membership.control.close()  # type: ignore[attr-defined]
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
