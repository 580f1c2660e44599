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

from fogline.adapters.grpc.control import GrpcControlClient
from fogline.adapters.grpc.server import bind, create_server, set_serving
from fogline.adapters.grpc.v2 import LocalBackend, v2_handler
from fogline.adapters.http import start_http
from fogline.adapters.metrics import GaugeSample, Metrics
from fogline.adapters.runtime import Runtime
from fogline.adapters.tls.credentials import server_credentials
from fogline.adapters.tls.material import ClientAuth
from fogline.core.control.membership import MembershipLoop
from fogline.core.control.registry import Load, Member
from fogline.core.security.identity import Identity, group_dns_name
from fogline.core.serving.batching import DynamicBatcher
from fogline.core.serving.dataplane import LocalDataPlane, ServedModel
from fogline.core.serving.repository import ModelConfig, load_repository
from fogline.servers.membership import join, leave_and_stop, parent_control
from fogline.servers.security import ProcessSecurity, prepare
from fogline.servers.settings import ProcessSettings

log = logging.getLogger(__name__)

LoadRuntime = Callable[[ModelConfig], Runtime]


@dataclass(kw_only=True)
class ModelServerSettings(ProcessSettings):
    """What the device nodes and the GPU workers are both configured with."""

    model_repository: Path
    """Directory with <model>/config.toml and <model>/<version>/<model file>."""
    node_id: str = field(default_factory=lambda: f"node-{socket.gethostname()}")
    """Unique id among its master's members; the master routes and reports by it."""
    region: str = "default"
    """Region this process serves; reported to its master and in status."""
    models: tuple[str, ...] | None = None
    """Models to load from the repository (default: all)."""
    master: str | None = None
    """host:port of the parent master's control plane; None runs stand-alone (and is not needed
    with ``consul``)."""
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
        self.security: ProcessSecurity | None = None

    def identity(self) -> Identity:
        """What this process's certificate names: ``spiffe://fogline/device/<region>/<id>`` or
        ``spiffe://fogline/worker/<id>``."""
        region = self.settings.region if self.service == "device" else ""
        return Identity(service=self.service, id=self.settings.node_id, region=region)

    def parent_server_name(self) -> str:
        """The name its master's certificate carries: an edge master of its region, or the cloud master."""
        return group_dns_name("edge", self.settings.region) if self.service == "device" else group_dns_name("cloud")

    async def start(self) -> dict[str, Any]:
        """Load the models, bind and serve, then join the master; the endpoints."""
        s = self.settings
        self.security = security = await prepare(s, self.identity(), parent_server_name=self.parent_server_name())
        self.dataplane = dataplane = LocalDataPlane(s.node_id, self.tier, self._load_models(),
                                                    fault_delay_s=s.fault_delay_s)
        self.metrics.add_gauges(self._gauges)

        api_keys = None
        if s.api_keys:
            from fogline.core.security.apikeys import ApiKeys

            api_keys = ApiKeys(s.api_keys)
        self._server, self._health = create_server(
            v2_handler(LocalBackend(dataplane, self.server_name), self.metrics, api_keys=api_keys),
            max_message_bytes=s.max_message_bytes)
        creds = server_credentials(security.material, s.tls.client_auth) if security and s.tls else None
        grpc_port = bind(self._server, s.host, s.grpc_port, credentials=creds)
        tls = (security.material, ClientAuth.OPTIONAL) if security else None
        # every port is bound before anything serves
        self._http, http_port = await start_http(self, self.metrics, s.host, s.http_port, tls=tls)
        await self._server.start()
        await set_serving(self._health, True)
        advertise = s.advertise_host or s.host
        self.endpoints = {"id": s.node_id, "region": s.region, "grpc": f"{advertise}:{grpc_port}",
                          "http": f"{advertise}:{http_port}"}
        control = parent_control(s.consul, s.master, material=security.material if security else None,
                                 server_name=self.parent_server_name())
        if security is not None:
            security.start(renew_with=control if isinstance(control, GrpcControlClient) else None)
        if control is not None:
            self.membership = join(control, self._member, self._load)
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
        """Whether to take requests, and why not."""
        if self.dataplane is None or not self.dataplane.ready():
            return False, "draining" if self.dataplane is not None else "starting"
        if self.membership is not None and not self.membership.registered.is_set():
            where = self.settings.consul.consul.url if self.settings.consul else self.settings.master
            return False, f"not registered with {'Consul' if self.settings.consul else 'its master'} at {where}"
        return True, ""

    def status(self) -> dict[str, Any]:
        """The process's ``/v1/status``."""
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
        """Refuse new work, leave the master (it stops routing here first), stop serving, stop the models."""
        assert self.dataplane is not None
        self.dataplane.draining = True
        await leave_and_stop(self.membership, self._stop_serving)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def _stop_serving(self) -> None:
        await set_serving(self._health, False)
        await self._server.stop(self.settings.drain_grace_s)  # refuse new calls, finish running ones
        await self._http.cleanup()
        if self.security is not None:
            await self.security.stop()
