"""The data plane of a process that runs models itself (device node, GPU worker).

Protocol-independent: the gRPC adapter decodes a request into an :class:`InferRequest`, calls
:meth:`LocalDataPlane.infer` and encodes what comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fogline.core.parameters import PARAM_NODE, PARAM_TIER
from fogline.core.serving.batching import DynamicBatcher
from fogline.core.tensors import InferRequest, InferResponse, ModelSpec
from fogline.errors import ModelNotFoundError, echo_name, echo_names


@dataclass
class ServedModel:
    """A loaded model: what it accepts, the batcher that runs it, and where it runs."""

    spec: ModelSpec
    batcher: DynamicBatcher
    providers: list[str] = field(default_factory=list)


class LocalDataPlane:
    """Validates requests against the model specs and runs them through each model's batcher."""

    def __init__(self, node_id: str, tier: str, models: Mapping[str, ServedModel], *,
                 clock: Callable[[], float] = time.monotonic, fault_delay_s: float = 0.0) -> None:
        self.node_id = node_id
        self.tier = tier
        self.models = dict(models)
        self.clock = clock
        self.draining = False  # readiness only: requests already routed here are still served
        self._tags = {PARAM_TIER: tier, PARAM_NODE: node_id}
        self.fault_delay_s = fault_delay_s  # injected latency (chaos tests): see ModelServerSettings

    def model(self, name: str, version: str = "") -> ServedModel:
        """The model serving ``name`` (at ``version``, if given); ModelNotFoundError naming what is served."""
        served = self.models.get(name)
        if served is None:
            raise ModelNotFoundError(
                f"model {echo_name(name)} is not served by {self.node_id}; it serves {echo_names(sorted(self.models))}")
        if version and version != served.spec.version:
            raise ModelNotFoundError(f"model {echo_name(name)} version {echo_name(version)} is not loaded; "
                                     f"loaded: {served.spec.version!r}")
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
        if self.fault_delay_s:
            await asyncio.sleep(self.fault_delay_s)
        outputs = await served.batcher.infer(request.inputs, deadline=request.deadline)
        if request.outputs:
            outputs = {name: outputs[name] for name in request.outputs}
        return InferResponse(model=spec.name, version=spec.version, id=request.id, outputs=outputs,
                             parameters=dict(self._tags))

    def load(self) -> tuple[int, int]:
        """(requests running, requests queued) over all models."""
        running = sum(m.batcher.in_flight for m in self.models.values())
        queued = sum(m.batcher.queue_depth for m in self.models.values())
        return running, queued

    def status(self) -> dict[str, object]:
        return {
            name: {
                "version": m.spec.version,
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
