"""The model lifecycle in the processes: model syncs with the parent, installs on devices, the edge's
artefact cache and rollout reports, and the cloud's rollouts.

Every heartbeat interval each member sends its parent a model sync (``SyncModels``): the versions
it has loaded and, below, what it is doing about its plans; the answer is the plans it follows.

- **Cloud master** (:class:`CloudModels`): the rollout controller. Edges' reports go to it, its
  plans go to the edges, and a tick advances steps whose gates held for the bake time.
- **Edge master** (:class:`EdgeModels`): takes the cloud's plans, routes by them (the router's
  :class:`~fogline.core.lifecycle.traffic.VersionTraffic`), fetches their artefacts into its
  bounded cache, passes a plan down to its devices once every file of it is cached (so during a
  partition a cached plan still installs), serves the files to the devices, and reports each
  rollout's traffic up. Cut off from the cloud, it keeps the last plans: the step holds.
- **Device node** (:class:`Installer`): fetches the files of each version its plan names from its
  edge master, verifies them, puts them into its repository and hot-loads them beside the stable
  version; unloads the versions its plans no longer name.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from fogline.adapters.grpc.artefacts import ArtefactFetcher, OpenStream, download, verify_and_place
from fogline.core.control.backoff import Backoff
from fogline.core.control.registry import EmbeddedRegistry, Member
from fogline.core.lifecycle.cache import ArtefactCache
from fogline.core.lifecycle.plan import (
    FAILED,
    FETCHING,
    LOADING,
    READY,
    ROLLED_BACK,
    InstallState,
    ModelPlan,
    RolloutReport,
    VersionManifest,
)
from fogline.core.lifecycle.traffic import VersionTraffic
from fogline.core.routing.pool import EndpointPool
from fogline.core.tasks import stop_task
from fogline.errors import FoglineError, InvalidInputError, echo_name

log = logging.getLogger(__name__)

INSTALLED_MARK = ".fogline-installed"
"""A file in a version directory a node fetched (so a rolled-back canary's files can be removed)."""
STAGING = ".fogline-staging"
"""Where a node assembles a version being fetched, inside its repository (a dot name: never a model)."""


class ModelControl(Protocol):
    """The parent's end of the model sync (``GrpcControlClient``)."""

    async def sync_models(self, member_id: str, loaded: list[tuple[str, str]], installs: list[InstallState],
                          reports: list[RolloutReport]) -> list[ModelPlan] | None: ...


class ModelSyncLoop:
    """Sends a model sync every ``interval()`` seconds once ``registered`` is set, and applies the plans
    that come back; while the parent is unreachable the last plans stay in force."""

    def __init__(self, control: ModelControl, member_id: str, *, loaded: Callable[[], list[tuple[str, str]]],
                 apply: Callable[[list[ModelPlan]], None], registered: asyncio.Event,
                 interval: Callable[[], float] = lambda: 1.0,
                 installs: Callable[[], list[InstallState]] = list,
                 reports: Callable[[], list[RolloutReport]] = list) -> None:
        self.control = control
        self.member_id = member_id
        self._loaded, self._apply, self._installs, self._reports = loaded, apply, installs, reports
        self._registered = registered
        self._interval = interval
        self._backoff = Backoff(initial_s=0.1, max_s=2.0)
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.last_error = ""
        self.synced = asyncio.Event()
        """Set after the first sync that got plans back."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="model-sync")

    async def stop(self) -> None:
        await stop_task(self._task)

    async def sync_once(self) -> bool:
        """One sync; False if the parent does not know this member (yet)."""
        plans = await self.control.sync_models(self.member_id, self._loaded(), self._installs(), self._reports())
        if plans is None:
            return False
        self._apply(plans)
        self.synced.set()
        return True

    async def _run(self) -> None:
        while True:
            await self._registered.wait()
            try:
                self.connected = await self.sync_once()
                self.last_error = ""
                self._backoff.reset()
                delay = self._interval()
            except FoglineError as err:
                self.connected = False
                self.last_error = err.message[:300]
                delay = self._backoff.next_delay()
                log.debug("model sync failed: %s", err)
            except Exception:  # a bug in applying plans must not end the loop
                log.exception("model sync failed")
                delay = self._backoff.next_delay()
            await asyncio.sleep(delay)

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "last_error": self.last_error}


# --- Device node ---------------------------------------------------------------------------------------


class ModelHost(Protocol):
    """What the installer needs of a model server (``fogline.servers.model_server.ModelServer``)."""

    @property
    def repository(self) -> Path: ...

    def loaded_versions(self, name: str) -> list[str]: ...

    def serve(self, name: str, version: str) -> None: ...

    async def load(self, name: str, version: str | None = None, *, keep_old: bool = False,
                   serve: bool = True) -> Any: ...

    async def unload(self, name: str, version: str | None = None) -> list[str]: ...


class Installer:
    """Makes a node hold what its plans say: per model, fetch and load each version named, serve the
    stable one, unload the others. One model converges at a time per model (a task each); a version
    that fails to install is reported and not retried under the same rollout."""

    def __init__(self, host: ModelHost, open_stream: OpenStream, *, node_id: str = "node",
                 rate_mbps: float | None = None) -> None:
        self.host = host
        self.node_id = node_id
        self._progress: dict[str, tuple[int, int]] = {}  # digest -> (bytes, size) of what is being fetched
        self.fetcher = ArtefactFetcher(open_stream, rate_mbps=rate_mbps, on_progress=self._on_progress)
        self._fetching: dict[tuple[str, str], VersionManifest] = {}
        self._plans: dict[str, ModelPlan] = {}
        self._states: dict[tuple[str, str], InstallState] = {}
        self._failed: dict[tuple[str, str, str], str] = {}  # (name, version, rollout id) -> why
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()

    def apply(self, plans: Sequence[ModelPlan]) -> None:
        """The plans now in force (from the edge master's sync answer); models not named are left alone."""
        for plan in plans:
            if self._plans.get(plan.name) != plan or not self._converged(plan):
                self._plans[plan.name] = plan
                self._dirty.add(plan.name)
                task = self._tasks.get(plan.name)
                if task is None or task.done():
                    self._tasks[plan.name] = asyncio.create_task(self._converge_loop(plan.name),
                                                                 name=f"install-{plan.name}")

    def _converged(self, plan: ModelPlan) -> bool:
        loaded = self.host.loaded_versions(plan.name)
        wanted = plan.versions()
        failed = {v for (n, v, r) in self._failed if n == plan.name and r == plan.rollout_id}
        return all(v in loaded or v in failed for v in wanted) and all(v in wanted for v in loaded)

    def _on_progress(self, digest: str, done: int, size: int) -> None:
        self._progress[digest] = (done, size)

    def states(self) -> list[InstallState]:
        """The progress of every version a plan names (for the sync and status)."""
        wanted = {(p.name, v) for p in self._plans.values() for v in p.versions()}
        out = []
        for key, state in self._states.items():
            if key not in wanted:
                continue
            manifest = self._fetching.get(key)
            if manifest is not None and state.state == FETCHING:
                got = sum(self._progress.get(f.digest, (0, 0))[0] for f in manifest.files)
                state = InstallState(state.name, state.version, FETCHING, got, manifest.size)
            out.append(state)
        return out

    async def stop(self) -> None:
        for task in self._tasks.values():
            await stop_task(task)

    async def _converge_loop(self, name: str) -> None:
        while name in self._dirty:
            self._dirty.discard(name)
            try:
                await self._converge(self._plans[name])
            except Exception:
                log.exception("installing the plan of %s failed", name)

    async def _converge(self, plan: ModelPlan) -> None:
        for manifest in (plan.stable, plan.canary):
            if manifest is not None:
                await self._ensure(manifest, plan.rollout_id)
        loaded = self.host.loaded_versions(plan.name)
        stable = plan.stable.version if plan.stable else None
        if stable is None or stable not in loaded:
            return  # never unload what serves before its replacement is in
        self.host.serve(plan.name, stable)
        for version in loaded:
            if version not in plan.versions():
                await self.host.unload(plan.name, version)
                self._states.pop((plan.name, version), None)
        if plan.state == ROLLED_BACK:  # what it fetched for the withdrawn version goes, loaded or not
            self._remove_fetched(plan.name, keep=plan.versions())

    async def _ensure(self, manifest: VersionManifest, rollout_id: str) -> None:
        name, version = manifest.name, manifest.version
        key = (name, version)
        if version in self.host.loaded_versions(name):
            self._states[key] = InstallState(name, version, READY, manifest.size, manifest.size)
            return
        if (name, version, rollout_id) in self._failed:
            return
        try:
            if manifest.files:
                await self._fetch(manifest)
            self._states[key] = InstallState(name, version, LOADING, manifest.size, manifest.size)
            await self.host.load(name, version, keep_old=True, serve=False)
            self._states[key] = InstallState(name, version, READY, manifest.size, manifest.size)
        except (FoglineError, OSError) as err:
            why = (err.message if isinstance(err, FoglineError) else f"cannot write to the repository: {err}")[:500]
            self._failed[(name, version, rollout_id)] = why
            self._states[key] = InstallState(name, version, FAILED, 0, manifest.size, why)
            log.warning("cannot install %s version %s: %s", name, version, why)

    def _version_dir(self, name: str, version: str) -> Path:
        return self.host.repository / name / version

    async def _fetch(self, manifest: VersionManifest) -> None:
        """Every file of ``manifest`` into the repository, verified: assembled in a staging directory,
        then moved in as the version directory in one rename."""
        name, version = manifest.name, manifest.version
        final = self._version_dir(name, version)
        if final.is_dir() and (final / INSTALLED_MARK).exists():
            return  # fetched and verified before (a restart): load it
        if final.exists():
            raise InvalidInputError(f"{final} exists already and holds another copy of {name} version {version}; "
                                    f"remove it or push the model under another version")
        staging = self.host.repository / STAGING / self.node_id / name / version
        staging.mkdir(parents=True, exist_ok=True)
        self._states[(name, version)] = InstallState(name, version, FETCHING, 0, manifest.size)
        self._fetching[(name, version)] = manifest
        try:
            for ref in manifest.files:
                rel = PurePosixPath(ref.path)
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise InvalidInputError(f"artefact path {echo_name(ref.path)} of {name} v{version} is not relative")
                dest = staging.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.exists():
                    part = dest.with_name(dest.name + ".part")
                    await download(self.fetcher, ref.digest, ref.size, part, partial(_place, dest))
                self._progress[ref.digest] = (ref.size, ref.size)
        finally:
            self._fetching.pop((name, version), None)
        (staging / INSTALLED_MARK).write_text("fetched by fogline; removed if its rollout rolls back\n")
        model_dir = self.host.repository / name
        config = model_dir / "config.toml"
        model_dir.mkdir(parents=True, exist_ok=True)
        if not config.exists():
            if not manifest.config:
                raise InvalidInputError(f"{name} has no config.toml on this node and the plan carries none")
            tmp = config.with_name(f".config.toml.{self.node_id}.tmp")
            tmp.write_text(manifest.config)
            tmp.replace(config)
        try:
            staging.replace(final)
        except OSError:  # a node sharing this repository moved its own copy in first
            if not (final / INSTALLED_MARK).exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)

    def _remove_fetched(self, name: str, *, keep: tuple[str, ...]) -> None:
        """Delete the version directories of ``name`` this node fetched, but ``keep`` (so that a restart,
        which loads the highest version on disk, does not serve a withdrawn one)."""
        model_dir = self.host.repository / name
        for directory in model_dir.iterdir() if model_dir.is_dir() else ():
            if directory.name not in keep and (directory / INSTALLED_MARK).exists():
                shutil.rmtree(directory, ignore_errors=True)


# --- Edge master -----------------------------------------------------------------------------------------


class EdgeModels:
    """An edge master's part in the lifecycle (see the module). ``devices`` is its device pool."""

    def __init__(self, devices: EndpointPool[Any], traffic: VersionTraffic, cache: ArtefactCache,
                 cloud: OpenStream | None, registry: EmbeddedRegistry, *, rate_mbps: float | None = None) -> None:
        self.devices = devices
        self.traffic = traffic
        self.cache = cache
        self.fetcher = ArtefactFetcher(cloud, rate_mbps=rate_mbps, on_progress=self._on_progress) if cloud else None
        self.registry = registry
        self.plans: list[ModelPlan] = []
        """The plans from the cloud in force here."""
        self.ready: list[ModelPlan] = []
        """Those whose files are all in the cache: what devices are told."""
        self._installs: dict[str, list[InstallState]] = {}
        self._cache_errors: dict[str, str] = {}  # model -> why its artefacts cannot be cached
        self._progress: dict[str, tuple[int, int]] = {}  # digest -> (bytes, total)
        self._prefetch: asyncio.Task[None] | None = None
        self._again = False
        self.bytes_fetched = 0
        self.bytes_served = 0

    # from the cloud master
    def apply(self, plans: list[ModelPlan]) -> None:
        """The cloud's plans for this region: route by them now, cache their files, then pass them down."""
        if plans == self.plans:
            return
        self.plans = plans
        self.traffic.apply(plans)
        self.cache.pin({f.digest for p in plans for m in (p.stable, p.canary) if m for f in m.files})
        self._refresh_ready()
        if self._prefetch is None or self._prefetch.done():
            self._prefetch = asyncio.create_task(self._fetch_all(), name="artefact-prefetch")
        else:
            self._again = True

    def _refresh_ready(self) -> None:
        self.ready = [p for p in self.plans if all(self.cache.has(f.digest) for m in (p.stable, p.canary)
                                                   if m for f in m.files)]

    async def _fetch_all(self) -> None:
        while True:
            self._again = False
            for plan in list(self.plans):
                for manifest in (plan.stable, plan.canary):
                    if manifest is not None:
                        await self._cache_manifest(plan, manifest)
            self._refresh_ready()
            if not self._again:
                return

    async def _cache_manifest(self, plan: ModelPlan, manifest: VersionManifest) -> None:
        for ref in manifest.files:
            if self.cache.has(ref.digest):
                continue
            if self.fetcher is None:
                self._cache_errors[plan.name] = "this edge master has no cloud master to fetch artefacts from"
                return
            try:
                part = self.cache.partial(ref.digest, ref.size)
                await download(self.fetcher, ref.digest, ref.size, part, self.cache.commit)
                self._progress[ref.digest] = (ref.size, ref.size)
                self._cache_errors.pop(plan.name, None)
            except FoglineError as err:
                self._cache_errors[plan.name] = f"edge cache: {err.message}"[:500]
                log.warning("cannot cache %s version %s: %s", plan.name, manifest.version, err)
                return

    def _on_progress(self, digest: str, done: int, size: int) -> None:
        before = self._progress.get(digest, (0, 0))[0]
        self.bytes_fetched += max(done - before, 0) if done >= before else done
        self._progress[digest] = (done, size)

    def served(self, n_bytes: int) -> None:
        """Bytes sent to a device (``FetchArtefact``)."""
        self.bytes_served += n_bytes

    # from the devices
    def sync(self, member: Member, installs: Sequence[InstallState],
             reports: Sequence[RolloutReport]) -> list[ModelPlan]:
        """A device's model sync: keep its installs, give it the plans whose files are cached."""
        self._installs[member.id] = list(installs)[:256]
        return self.ready

    def forget(self) -> None:
        """Drop the installs of devices that left."""
        present = {s.member.id for s in self.registry.members("device", include_unchecked=True)}
        for gone in set(self._installs) - present:
            del self._installs[gone]

    # to the cloud master
    def loaded(self) -> list[tuple[str, str]]:
        """Every version some device of the region has loaded."""
        return sorted({v for e in self.devices.endpoints.values() for v in e.state.member.versions})

    def reports(self) -> list[RolloutReport]:
        self.forget()
        return self.traffic.reports(self._devices_of, self._install_errors())

    def _devices_of(self, model: str, canary: str) -> tuple[int, int]:
        holders = self.devices.for_model(model)
        return len(holders), sum((model, canary) in e.state.member.versions for e in holders)

    def _install_errors(self) -> dict[str, str]:
        errors = dict(self._cache_errors)
        for plan in self.plans:
            if plan.canary is None:
                continue
            for device, states in self._installs.items():
                for s in states:
                    if s.name == plan.name and s.version == plan.canary.version and s.state == FAILED:
                        errors.setdefault(plan.name, f"device {device}: {s.error}")
        return errors

    def status(self) -> dict[str, Any]:
        """``/v1/status``'s ``lifecycle``: plans, per-device installs, cache and transfers."""
        return {
            "plans": {p.name: {"rollout_id": p.rollout_id, "state": p.state, "step": p.step,
                               "canary_share": p.canary_share,
                               "stable": p.stable.version if p.stable else None,
                               "canary": p.canary.version if p.canary else None,
                               "cached": p in self.ready} for p in self.plans},
            "installs": {d: [_install_json(s) for s in states] for d, states in self._installs.items()},
            "cache": {**self.cache.usage(), "errors": dict(self._cache_errors)},
            "transfers": {d: {"bytes": got, "total": total, "share": round(got / total, 4) if total else 1.0}
                          for d, (got, total) in self._progress.items()},
            "bytes_fetched": self.bytes_fetched, "bytes_served": self.bytes_served,
            "traffic": self.traffic.status(),
        }

    def gauges(self) -> list[tuple[str, str, dict[str, str], float]]:
        usage = self.cache.usage()
        out: list[tuple[str, str, dict[str, str], float]] = [
            ("fogline_artefact_cache_bytes", "Bytes of artefacts in this edge master's cache", {},
             float(usage["bytes"])),
            ("fogline_artefact_cache_limit_bytes", "The artefact cache's size limit", {}, float(usage["max_bytes"]))]
        for digest, (got, total) in self._progress.items():
            out.append(("fogline_artefact_fetch_share", "Share of an artefact fetched into the cache",
                        {"digest": digest[:19]}, got / total if total else 1.0))
        for device, states in self._installs.items():
            for s in states:
                out.append(("fogline_install_share", "Share of a version's files a device has installed",
                            {"device": device, "model": s.name, "version": s.version},
                            s.bytes_done / s.bytes_total if s.bytes_total else float(s.state == READY)))
        return out

    def counters(self) -> list[tuple[str, str, dict[str, str], float]]:
        return [("fogline_artefact_bytes_fetched", "Artefact bytes this edge master fetched from the cloud", {},
                 float(self.bytes_fetched)),
                ("fogline_artefact_bytes_sent", "Artefact bytes this master sent to its members", {},
                 float(self.bytes_served))]


def _place(dest: Path, digest: str, part: Path) -> Path:
    return verify_and_place(part, digest, dest)


def _install_json(s: InstallState) -> dict[str, Any]:
    return {"model": s.name, "version": s.version, "state": s.state, "bytes": s.bytes_done,
            "total": s.bytes_total, "error": s.error}


# --- Cloud master ---------------------------------------------------------------------------------------


class CloudModels:
    """The cloud master's part: edges' model syncs feed the rollout controller and get its plans."""

    def __init__(self, controller: Any, registry: EmbeddedRegistry, *, tick_s: float = 0.5) -> None:
        self.controller = controller
        self.registry = registry
        self.tick_s = tick_s
        self._task: asyncio.Task[None] | None = None
        self.bytes_sent = 0

    def sync(self, member: Member, installs: Sequence[InstallState],
             reports: Sequence[RolloutReport]) -> list[ModelPlan]:
        for report in reports:
            self.controller.report(member.region, report)
        plans: list[ModelPlan] = self.controller.plans_for(member.region)
        return plans

    def sent(self, n_bytes: int) -> None:
        self.bytes_sent += n_bytes

    def regions(self) -> set[str]:
        return {s.member.region for s in self.registry.members("edge")}

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick_loop(), name="rollouts")

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.controller.tick(self.regions())
            except Exception:
                log.exception("advancing rollouts failed")

    def serving(self, model: str) -> list[str]:
        """The versions of ``model`` some region's devices have loaded, as the edges report them."""
        found = {v for s in self.registry.members("edge") for n, v in s.member.versions if n == model}
        return sorted(found, key=lambda v: (len(v), v))
