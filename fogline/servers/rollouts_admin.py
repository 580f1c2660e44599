"""The cloud master's rollouts over REST: operations on the admin API, reads on both APIs.

Admin API (behind the admin credential):

- ``POST /v1/admin/rollouts/{name}`` with JSON ``{"version": 2, "steps": [10, 50, 100], "bake_s": 30,
  "regions": [], "gates": {...}}`` (all but ``version`` optional): start a rollout of a pushed
  version; 201 with its status. 404 for an unknown model or version (naming what the registry has),
  409 while another rollout of the model runs, 400 for bad steps or gates.
- ``POST /v1/admin/rollouts/{name}/pause``, ``/resume``, ``/rollback``: 200 with the status; 409 when
  the rollout's state does not allow it (a rollback with no previous version among them).
- ``GET /v1/admin/rollouts``, ``GET /v1/admin/rollouts/{name}``.

REST status port (read-only): ``GET /v1/rollouts`` and ``GET /v1/rollouts/{name}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fogline.adapters.http.admin import AdminRoute, read_json
from fogline.core.lifecycle.gates import GateSettings
from fogline.core.lifecycle.plan import ArtefactRef, VersionManifest
from fogline.core.lifecycle.registry import ModelRegistry, VersionRecord, check_model_name
from fogline.core.lifecycle.rollout import RolloutController
from fogline.errors import InvalidInputError, ModelNotFoundError, UnavailableError, echo_name, echo_names

ROLLOUTS_OFF = "rollouts need the model registry: start the cloud master with --model-store DIR"
START_KEYS = frozenset({"version", "steps", "bake_s", "regions", "gates"})


def manifest_of(registry: ModelRegistry, record: VersionRecord) -> VersionManifest:
    """What a node needs to install ``record``: its files by digest and size, and its config."""
    files = tuple(ArtefactRef(path, digest, registry.blob_path(digest).stat().st_size)
                  for path, digest in sorted(record.files.items()))
    return VersionManifest(record.name, str(record.version), files, record.config_text)


class RolloutRoutes:
    """Starts and steers rollouts of registry versions; ``serving(model)`` says which versions the
    regions report loaded (to find the stable version of a model's first rollout)."""

    def __init__(self, registry: ModelRegistry | None, controller: RolloutController | None,
                 serving: Callable[[str], list[str]]) -> None:
        self._registry = registry
        self._controller = controller
        self._serving = serving

    @property
    def controller(self) -> RolloutController:
        if self._controller is None:
            raise UnavailableError(ROLLOUTS_OFF)
        return self._controller

    def admin_routes(self) -> dict[tuple[str, str], AdminRoute]:
        return {("POST", "/v1/admin/rollouts/{name}"): self.start,
                ("POST", "/v1/admin/rollouts/{name}/{action}"): self.act,
                ("GET", "/v1/admin/rollouts"): lambda request: self.rollouts(),
                ("GET", "/v1/admin/rollouts/{name}"): lambda request: self.rollout(request.match_info["name"])}

    def status_routes(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        return {"/v1/rollouts": self.rollouts, "/v1/rollouts/{name}": self.rollout}

    async def rollouts(self) -> Any:
        controller = self.controller
        return [controller.status_json(r.model) for r in controller.list()]

    async def rollout(self, name: str) -> Any:
        return self.controller.status_json(name)

    async def start(self, request: web.Request) -> Any:
        controller = self.controller
        assert self._registry is not None
        name = check_model_name(request.match_info["name"])
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidInputError('the body is a JSON object: {"version": N, "steps": [...], "bake_s": S, ...}')
        unknown = set(body) - START_KEYS
        if unknown:
            raise InvalidInputError(f"unknown rollout settings {echo_names(sorted(unknown))}; "
                                    f"known: {sorted(START_KEYS)}")
        version = _version(body.get("version"))
        canary = manifest_of(self._registry, self._registry.version(name, version))
        stable = self._stable(name, str(version))
        steps = tuple(_int_list(body.get("steps", [10, 50, 100]), "steps"))
        regions = tuple(_str_list(body.get("regions", []), "regions"))
        bake_s = body.get("bake_s", 30.0)
        if isinstance(bake_s, bool) or not isinstance(bake_s, int | float):
            raise InvalidInputError("bake_s is a number of seconds")
        gates = GateSettings.from_json(body.get("gates") or {})
        controller.start(name, str(version), canary=canary, stable=stable, steps=steps, bake_s=float(bake_s),
                         regions=regions, gates=gates)
        return web.json_response(controller.status_json(name), status=201)

    async def act(self, request: web.Request) -> Any:
        controller = self.controller
        name, action = request.match_info["name"], request.match_info["action"]
        if action == "pause":
            controller.pause(name)
        elif action == "resume":
            controller.resume(name)
        elif action == "rollback":
            controller.rollback(name)
        else:
            raise ModelNotFoundError(f"no rollout operation {echo_name(action)}; use pause, resume or rollback")
        return controller.status_json(name)

    def _stable(self, name: str, version: str) -> VersionManifest | None:
        """The version the canary is compared with: what the fleet serves after the model's last rollout,
        else the highest other version the regions report loaded; its files when the registry has it."""
        assert self._registry is not None
        current = self.controller.current_version(name)
        if current is None or current == version:
            others = [v for v in self._serving(name) if v != version]
            current = others[-1] if others else None
        if current is None:
            return None
        try:
            return manifest_of(self._registry, self._registry.version(name, int(current)))
        except (ModelNotFoundError, ValueError):
            return VersionManifest(name, current)  # on the nodes' own disks, not in the registry


def _version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise InvalidInputError('"version" is the number of a pushed version, e.g. {"version": 2}')
    return int(value)


def _int_list(value: Any, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InvalidInputError(f"{key} is a list of percents, e.g. [10, 50, 100]")
    return value


def _str_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(f"{key} is a list of region names")
    return value
