"""A process that runs models itself — a device node or a GPU worker — wired once.

Model repository -> one runtime per model version -> a :class:`DynamicBatcher` each ->
:class:`LocalDataPlane`, served over V2 gRPC (with ``grpc.health.v1`` and Triton's model-repository
extension for admins) and REST status; membership in a parent master when one is given; hot swap of
model versions (:meth:`ModelServer.load`); draining. The tiers differ only in their identity and in how
a model is loaded (``load_runtime``), so this module imports no execution library itself.
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
from fogline.adapters.grpc.repository import READY, UNAVAILABLE, IndexEntry, repository_handler
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
from fogline.core.serving.dataplane import LocalDataPlane, ServedModel, version_order, warm_up_feeds
from fogline.core.serving.repository import (
    ConfigError,
    ModelConfig,
    find_model_dir,
    list_models,
    load_model,
    load_repository,
)
from fogline.errors import FoglineError, InternalError, InvalidInputError, ModelNotFoundError, echo_name
from fogline.servers.lifecycle import Installer, ModelSyncLoop
from fogline.servers.membership import join, leave_and_stop, parent_control
from fogline.servers.security import ProcessSecurity, prepare
from fogline.servers.settings import ProcessSettings

log = logging.getLogger(__name__)

LoadRuntime = Callable[[ModelConfig], Runtime]


def vars_of(install: Any) -> dict[str, Any]:
    """An install's progress for status."""
    return {"model": install.name, "version": install.version, "state": install.state,
            "bytes": install.bytes_done, "total": install.bytes_total, "error": install.error}


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
    admin_token_file: Path | None = None
    """File with the admin bearer token that Triton's repository calls (load, unload, index) may carry;
    without it (and without TLS requiring client certificates, for admin certificates) they are refused."""
    fetch_rate_mbps: float | None = None
    """The most a device fetches model artefacts from its edge master at, in megabits a second (thin
    links); None: as fast as the link goes."""


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
        self.model_sync: ModelSyncLoop | None = None
        self.installer: Installer | None = None
        self.security: ProcessSecurity | None = None
        self._swaps: dict[str, asyncio.Lock] = {}  # one load or unload of a model at a time
        self.load_errors: dict[str, tuple[str, str]] = {}
        """Per model, the version its last load failed to load ("" if unknown) and why (cleared by a load
        that works); shown in status and in the repository index."""
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")

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

        certificates = s.tls is not None and s.tls.client_auth is ClientAuth.REQUIRE
        try:
            repository = repository_handler(self, token_file=s.admin_token_file, certificates=certificates)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._server, self._health = create_server(
            v2_handler(LocalBackend(dataplane, self.server_name), self.metrics, api_keys=s.load_api_keys()), repository,
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
            self.membership = membership = join(control, self._member, self._load)
            if isinstance(control, GrpcControlClient) and self.service == "device":
                # NOTE: devices take part in the model lifecycle through their edge master; GPU workers
                # change versions through the repository extension only.
                self.installer = Installer(self, control.artefact_stream(), node_id=s.node_id,
                                           rate_mbps=s.fetch_rate_mbps)
                self.model_sync = ModelSyncLoop(control, s.node_id, loaded=self._loaded_versions,
                                                apply=self.installer.apply, installs=self.installer.states,
                                                registered=membership.registered,
                                                interval=lambda: membership.interval_s)
                self.model_sync.start()
        return dict(self.endpoints)

    # --- What the installer needs (fogline.servers.lifecycle.ModelHost) ------------------------------------

    @property
    def repository(self) -> Path:
        return self.settings.model_repository

    def loaded_versions(self, name: str) -> list[str]:
        assert self.dataplane is not None
        return self.dataplane.loaded_versions(name)

    def serve(self, name: str, version: str) -> None:
        """Make the loaded ``version`` answer requests for ``name`` that name no version."""
        assert self.dataplane is not None
        if self.dataplane.models[name].spec.version != version:
            self.dataplane.serve(name, version)
            log.info("model %s serves version %s", name, version)

    def _loaded_versions(self) -> list[tuple[str, str]]:
        assert self.dataplane is not None
        return [(name, v) for name in self.dataplane.versions for v in self.dataplane.loaded_versions(name)]

    def _load_models(self) -> dict[str, ServedModel]:
        configs = load_repository(self.settings.model_repository, self.settings.models)
        runtimes = [(config, self._load_runtime(config)) for config in configs]
        # NOTE: threads start only when batches need them, so room for a second version of every model
        # (a hot swap runs both for a moment) costs nothing until used.
        self._executor = ThreadPoolExecutor(max_workers=2 * sum(c.batching.instances for c in configs) + 2,
                                            thread_name_prefix="model-run")
        served = {}
        for config, runtime in runtimes:
            served[config.name] = self._serve(config, runtime)
            log.info("loaded %s v%s on %s", config.name, config.version, runtime.providers)
        return served

    def _serve(self, config: ModelConfig, runtime: Runtime) -> ServedModel:
        """``runtime`` with its batcher, ready to be added to the data plane."""
        batcher = DynamicBatcher(config.name, runtime.run, config.batching, executor=self._executor,
                                 on_batch=self.metrics.batch_observer(config.name))
        return ServedModel(runtime.spec, batcher, runtime.providers, release=getattr(runtime, "close", None))

    # --- Hot swap -------------------------------------------------------------------------------------

    async def load(self, name: str, version: str | None = None, *, keep_old: bool = False,
                   serve: bool = True) -> ServedModel:
        """Load ``version`` of ``name`` (default: the latest on disk) beside what serves, warm it up, then
        make it serve ``name`` (one assignment on the event loop); requests already on the old version
        finish, then it is unloaded unless ``keep_old``. Loads of one model are serialized. A version that
        fails to load or to warm up leaves the old one serving: the failure is raised
        (InvalidInputError, InternalError), logged, and shown in status as the model's ``load_error``.
        ``serve=False`` (with ``keep_old``) loads it beside the serving version, for requests naming it."""
        loop = asyncio.get_running_loop()
        async with self._swaps.setdefault(name, asyncio.Lock()):
            config: ModelConfig | None = None
            try:
                config = await loop.run_in_executor(self._loader, self._config_of, name, version)
                served = await loop.run_in_executor(self._loader, self._load_version, config)
            except Exception as exc:
                raise self._load_failed(name, config.version if config else version, exc) from None
            self.load_errors.pop(name, None)
            await self._switch(served, keep_old=keep_old, serve=serve)
            return served

    async def unload(self, name: str, version: str | None = None) -> list[str]:
        """Unload ``version`` of ``name`` (default: every version), once the requests using it finish; the
        versions unloaded. Unloading the serving version hands ``name`` to the highest version left.
        ModelNotFoundError naming the loaded versions if that one is not loaded."""
        assert self.dataplane is not None
        async with self._swaps.setdefault(name, asyncio.Lock()):
            versions = [version] if version else self.dataplane.loaded_versions(name)
            if not versions:
                self.dataplane.model(name)  # raises: names the models served
            retired = [self.dataplane.remove(name, v) for v in versions]
            for served in retired:
                await self._retire(served)
            return versions

    def _config_of(self, name: str, version: str | None) -> ModelConfig:
        """The config of ``name`` at ``version`` (default: the latest) on disk (blocking: in the loader
        thread); ModelNotFoundError naming the models there for a name that is not."""
        root = self.settings.model_repository
        try:
            model_dir = find_model_dir(root, name)
        except ConfigError as exc:
            raise ModelNotFoundError(str(exc)) from None
        return load_model(model_dir, root=root, version=version)

    def _load_version(self, config: ModelConfig) -> ServedModel:
        """Load and warm up one version (blocking: in the loader thread)."""
        runtime = self._load_runtime(config)
        feeds, why_not = warm_up_feeds(runtime.spec)
        if feeds is None:
            log.info("model %s v%s: no warm-up run (%s)", config.name, config.version, why_not)
        else:
            try:
                runtime.run(feeds)
            except Exception as exc:
                raise InternalError(f"the warm-up run on zeros failed: {type(exc).__name__}: {exc}") from None
        log.info("loaded %s v%s on %s%s", config.name, config.version, runtime.providers,
                 "" if feeds is None else ", warm")
        return self._serve(config, runtime)

    def _load_failed(self, name: str, version: str | None, exc: Exception) -> FoglineError:
        """The error a failed load is reported with (and logged, and kept for status)."""
        what = f"model {echo_name(name)} version {echo_name(version) if version else '(latest)'} cannot be loaded"
        if isinstance(exc, FoglineError):
            err = type(exc)(f"{what}: {exc.message}")
        elif isinstance(exc, ConfigError):
            err = InvalidInputError(f"{what}: {exc}")
        else:
            err = InternalError(f"{what}: {type(exc).__name__}: {exc}")
        if not isinstance(err, ModelNotFoundError):
            self.load_errors[name] = (version or "", err.message)
        log.warning("%s; the versions loaded stay as they are", err.message)
        return err

    async def _switch(self, served: ServedModel, *, keep_old: bool, serve: bool = True) -> None:
        """Make ``served`` serve its name (or just load it, without ``serve``), then retire what it replaces."""
        assert self.dataplane is not None
        spec = served.spec
        same = self.dataplane.versions.get(spec.name, {}).get(spec.version)  # a reload of one version
        previous = self.dataplane.add(served, serve=serve)  # the switch: the next request runs on ``served``
        if self.dataplane.models[spec.name] is served:
            log.info("model %s serves version %s (was %s)", spec.name, spec.version,
                     previous.spec.version if previous else "none")
        else:
            log.info("model %s version %s loaded beside the serving version %s", spec.name, spec.version,
                     self.dataplane.models[spec.name].spec.version)
        retired = [] if same is None else [same]
        if previous is not None and previous is not same and not keep_old:
            retired.append(self.dataplane.remove(spec.name, previous.spec.version))
        for old in retired:
            await self._retire(old)

    async def _retire(self, served: ServedModel) -> None:
        """Wait (up to the drain grace) for the requests using ``served`` to finish, then release it."""
        try:
            await asyncio.wait_for(served.idle(), self.settings.drain_grace_s)
        except TimeoutError:
            log.warning("model %s v%s still had %d requests after %.1fs; unloading it anyway", served.spec.name,
                        served.spec.version, served.active, self.settings.drain_grace_s)
        if served.release is not None:
            await asyncio.get_running_loop().run_in_executor(self._loader, served.release)
        log.info("unloaded %s v%s", served.spec.name, served.spec.version)

    def repository_index(self) -> list[IndexEntry]:
        """Every model version on disk or loaded (Triton's repository index): READY if loaded, else
        UNAVAILABLE with the last load error of its model, if any."""
        assert self.dataplane is not None
        on_disk = list_models(self.settings.model_repository)
        entries = []
        for name in sorted(set(on_disk) | set(self.dataplane.versions)):
            loaded = self.dataplane.loaded_versions(name)
            for version in sorted(set(on_disk.get(name, [])) | set(loaded), key=version_order):
                failed, error = self.load_errors.get(name, ("", ""))
                state, reason = (READY, "") if version in loaded else (UNAVAILABLE, error if version == failed else "")
                entries.append(IndexEntry(name, version, state, reason))
        return entries

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
        for name, loaded in self.dataplane.versions.items():
            batchers = [m.batcher for m in loaded.values()]
            out.append(("fogline_queue_depth", "Requests waiting for a batch", {"model": name},
                        sum(b.queue_depth for b in batchers)))
            out.append(("fogline_in_flight", "Requests in running batches", {"model": name},
                        sum(b.in_flight for b in batchers)))
            serving = self.dataplane.models[name].spec.version if name in self.dataplane.models else ""
            for version in loaded:
                out.append(("fogline_model_version_loaded",
                            "1 for each model version loaded; serving: it answers requests naming no version",
                            {"model": name, "version": version, "serving": str(version == serving).lower()}, 1.0))
        if self.installer is not None:
            for install in self.installer.states():
                out.append(("fogline_install_share", "Share of a version's files fetched and installed",
                            {"model": install.name, "version": install.version},
                            install.bytes_done / install.bytes_total if install.bytes_total
                            else float(install.state == "ready")))
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
            "models": self._models_status(),
            "lifecycle": {"sync": self.model_sync.status(),
                          "installs": [vars_of(i) for i in self.installer.states()]}
            if self.model_sync and self.installer else None,
            **self.extra_status(),
        }

    def _models_status(self) -> dict[str, dict[str, object]]:
        """The data plane's status of each model, with its last load error (a model that never loaded
        shows only that)."""
        assert self.dataplane is not None
        models = self.dataplane.status()
        for name, (_, error) in self.load_errors.items():
            models.setdefault(name, {})["load_error"] = error
        return models

    def extra_status(self) -> dict[str, Any]:
        """Fields a tier adds to its ``/v1/status`` (none here)."""
        return {}

    async def drain(self) -> None:
        """Refuse new work, leave the master (it stops routing here first), stop serving, stop the models."""
        assert self.dataplane is not None
        self.dataplane.draining = True
        if self.model_sync is not None:
            await self.model_sync.stop()
        if self.installer is not None:
            await self.installer.stop()
        await leave_and_stop(self.membership, self._stop_serving)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        self._loader.shutdown(wait=False)

    async def _stop_serving(self) -> None:
        await set_serving(self._health, False)
        await self._server.stop(self.settings.drain_grace_s)  # refuse new calls, finish running ones
        await self._http.cleanup()
        if self.security is not None:
            await self.security.stop()
