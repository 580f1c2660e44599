"""The data plane of a process that runs models itself (device node, GPU worker).

Protocol-independent: the gRPC adapter decodes a request into an :class:`InferRequest`, calls
:meth:`LocalDataPlane.infer` and encodes what comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fogline.core.parameters import PARAM_NODE, PARAM_TIER
from fogline.core.serving.batching import DynamicBatcher
from fogline.core.tensors import InferRequest, InferResponse, ModelSpec, numpy_dtype
from fogline.errors import ModelNotFoundError, echo_name, echo_names


@dataclass(eq=False)
class ServedModel:
    """A loaded model version: what it accepts, the batcher that runs it, where it runs, and how many
    requests are using it (so an old version is unloaded only once they have finished)."""

    spec: ModelSpec
    batcher: DynamicBatcher
    providers: list[str] = field(default_factory=list)
    release: Callable[[], None] | None = None
    """Frees what the runtime holds (a session, device memory) once this version is unloaded."""
    active: int = 0
    """Requests between being routed to this version and having their answer."""
    _idle: asyncio.Event | None = field(default=None, repr=False)

    async def idle(self) -> None:
        """Wait until no request is using this version."""
        while self.active:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def finished_one(self) -> None:
        """A request using this version has its answer."""
        self.active -= 1
        if not self.active and self._idle is not None:
            self._idle.set()


class LocalDataPlane:
    """Validates requests against the model specs and runs them through each model's batcher.

    Several versions of a model may be loaded at once (``versions``: name -> version -> model); one
    of them serves requests that name no version (``models``: name -> serving model). A hot swap adds
    the new version beside the old, then points ``models`` at it in one assignment."""

    def __init__(self, node_id: str, tier: str, models: Mapping[str, ServedModel], *,
                 clock: Callable[[], float] = time.monotonic, fault_delay_s: float = 0.0) -> None:
        self.node_id = node_id
        self.tier = tier
        self.models = dict(models)
        self.versions = {name: {m.spec.version: m} for name, m in self.models.items()}
        self.clock = clock
        self.draining = False  # readiness only: requests already routed here are still served
        self._tags = {PARAM_TIER: tier, PARAM_NODE: node_id}
        self.fault_delay_s = fault_delay_s  # injected latency (chaos tests): see ModelServerSettings

    def model(self, name: str, version: str = "") -> ServedModel:
        """The model serving ``name`` ("" version), or ``name`` at ``version``; ModelNotFoundError naming
        the models (or that model's versions) loaded."""
        served = self.models.get(name)
        if served is None:
            raise ModelNotFoundError(
                f"model {echo_name(name)} is not served by {self.node_id}; it serves {echo_names(sorted(self.models))}")
        if not version or version == served.spec.version:
            return served
        loaded = self.versions.get(name, {})
        found = loaded.get(version)
        if found is None:
            raise ModelNotFoundError(f"model {echo_name(name)} version {echo_name(version)} is not loaded on "
                                     f"{self.node_id}; loaded: {echo_names(self.loaded_versions(name))}")
        return found

    def loaded_versions(self, name: str) -> list[str]:
        """The versions of ``name`` loaded, lowest first."""
        return sorted(self.versions.get(name, {}), key=version_order)

    def add(self, served: ServedModel, *, serve: bool = True) -> ServedModel | None:
        """Load ``served`` beside the versions of its model; with ``serve`` it serves the name from now
        on (one assignment: the next request goes to it). The model it replaced as serving, if any."""
        name = served.spec.name
        self.versions.setdefault(name, {})[served.spec.version] = served
        previous = self.models.get(name)
        if serve or previous is None:
            self.models[name] = served
            return previous
        return None

    def serve(self, name: str, version: str) -> None:
        """Make the loaded ``version`` serve ``name`` (requests naming no version) from the next request
        on; ModelNotFoundError naming the loaded versions if it is not loaded."""
        self.models[name] = self.model(name, version)

    def remove(self, name: str, version: str) -> ServedModel:
        """Take ``name`` at ``version`` out (requests already using it finish); if it was serving, the
        highest version left serves. ModelNotFoundError if it is not loaded."""
        served = self.model(name, version)
        loaded = self.versions[name]
        del loaded[version]
        if self.models[name] is served:
            if loaded:
                self.models[name] = loaded[max(loaded, key=version_order)]
            else:
                del self.models[name], self.versions[name]
        return served

    def ready(self) -> bool:
        return bool(self.models) and not self.draining

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run ``request`` on the model it names."""
        return await self.run(self.model(request.model, request.version), request)

    async def run(self, served: ServedModel, request: InferRequest) -> InferResponse:
        """Run ``request`` on ``served``, found by :meth:`model` (a caller that checks the model before it
        decodes the inputs)."""
        spec = served.spec
        spec.check_inputs(request.inputs)
        spec.check_outputs(request.outputs)
        served.active += 1
        try:
            if self.fault_delay_s:
                await asyncio.sleep(self.fault_delay_s)
            outputs = await served.batcher.infer(request.inputs, deadline=request.deadline)
        finally:
            served.finished_one()
        if request.outputs:
            outputs = {name: outputs[name] for name in request.outputs}
        return InferResponse(model=spec.name, version=spec.version, id=request.id, outputs=outputs,
                             parameters=dict(self._tags))

    def all_loaded(self) -> list[ServedModel]:
        """Every loaded model version."""
        return [m for loaded in self.versions.values() for m in loaded.values()]

    def load(self) -> tuple[int, int]:
        """(requests running, requests queued) over all loaded model versions."""
        loaded = self.all_loaded()
        running = sum(m.batcher.in_flight for m in loaded)
        queued = sum(m.batcher.queue_depth for m in loaded)
        return running, queued

    def status(self) -> dict[str, dict[str, object]]:
        """Per model: the serving version's figures, and every version loaded."""
        return {
            name: {
                "version": m.spec.version,
                "serving": m.spec.version,
                "versions": self.loaded_versions(name),
                "providers": m.providers,
                "max_batch_size": m.spec.max_batch_size,
                "in_flight": m.batcher.in_flight,
                "queue_depth": m.batcher.queue_depth,
                "batches": m.batcher.stats.batches,
                "requests": m.batcher.stats.requests,
                "largest_batch": m.batcher.stats.largest_batch,
                "mean_batch_size": round(m.batcher.stats.requests / m.batcher.stats.batches, 3)
                if m.batcher.stats.batches else 0.0,
                "rejected": m.batcher.stats.rejected,
                "expired": m.batcher.stats.expired,
            }
            for name, m in self.models.items()
        }


def version_order(version: str) -> tuple[int, int, str]:
    """A sort key of version names: plain numbers in numeric order (2 before 10), then any other name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def warm_up_feeds(spec: ModelSpec) -> tuple[dict[str, np.ndarray] | None, str]:
    """Inputs of zeros to run ``spec`` once before it serves (one row of a batch), or None and why none
    can be made (a free dimension other than the batch's, a BYTES input)."""
    feeds = {}
    for tensor in spec.inputs:
        shape = list(tensor.shape)
        if spec.max_batch_size > 0 and shape and shape[0] == -1:
            shape[0] = 1
        if -1 in shape:
            return None, f"input {tensor.name!r} has a free dimension: {list(tensor.shape)}"
        if tensor.datatype == "BYTES":
            return None, f"input {tensor.name!r} is BYTES"
        feeds[tensor.name] = np.zeros(shape, numpy_dtype(tensor.datatype))
    return feeds, ""

