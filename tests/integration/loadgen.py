"""Helpers of the integration tests: reference results from ONNX Runtime in-process, a closed-loop
load generator over the Fogline SDK, and an edge master with its device nodes to run it against."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RTOL, ATOL = 1e-4, 1e-5
SHAPES = {"mlp": (1, 64), "cnn": (1, 3, 64, 64)}


class Reference:
    """The sample models run by ONNX Runtime in this process: the results a node must give."""

    def __init__(self, models: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._sessions = {
            name: ort.InferenceSession(str(models / name / "1" / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
            for name in SHAPES
        }

    def __call__(self, model: str, x: np.ndarray) -> np.ndarray:
        return self._sessions[model].run(["logits"], {"input": x})[0]


def make_inputs(model: str, count: int, seed: int = 0, rows: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (rows, *SHAPES[model][1:])
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


@dataclass
class Outcome:
    seq: int
    model: str
    sample: int
    session: str | None
    started: float
    finished: float
    result: Any = None  # fogline.sdk.client.InferResult
    error: BaseException | None = None

    @property
    def node(self) -> str | None:
        return self.result.node if self.result is not None else None


class Load:
    """``concurrency`` workers, each sending one request at a time (closed loop), over the models of
    ``inputs`` in turn, until :meth:`stop`, ``max_requests`` requests or ``max_seconds``."""

    def __init__(self, client: Any, inputs: Mapping[str, Sequence[np.ndarray]], *, concurrency: int,
                 max_requests: int, max_seconds: float = 60.0,
                 session_of: Callable[[int], str | None] | None = None) -> None:
        self.client = client
        self.inputs = inputs
        self.models = list(inputs)
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.session_of = session_of
        self.outcomes: list[Outcome] = []
        self._next = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[list[Outcome]] | None = None

    async def run(self) -> list[Outcome]:
        deadline = time.monotonic() + self.max_seconds
        await asyncio.gather(*(self._worker(deadline) for _ in range(self.concurrency)))
        return self.outcomes

    def start(self) -> Load:
        self._task = asyncio.create_task(self.run(), name="load")
        return self

    def stop(self) -> None:
        self._stop.set()

    async def finish(self, timeout_s: float = 30.0) -> list[Outcome]:
        """Stop and wait for the requests in flight."""
        self.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout_s)
        return self.outcomes

    async def _worker(self, deadline: float) -> None:
        while not self._stop.is_set() and self._next < self.max_requests and time.monotonic() < deadline:
            seq = self._next
            self._next += 1
            model = self.models[seq % len(self.models)]
            samples = self.inputs[model]
            sample = (seq // len(self.models)) % len(samples)
            session = self.session_of(seq) if self.session_of else None
            started = time.monotonic()
            outcome = Outcome(seq, model, sample, session, started, started)
            try:
                outcome.result = await self.client.infer(model, {"input": samples[sample]}, session=session)
            except Exception as exc:
                outcome.error = exc
            outcome.finished = time.monotonic()
            self.outcomes.append(outcome)

    # -- views -----------------------------------------------------------------------------------

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is None]

    def by_node(self, since: float = float("-inf")) -> Counter[str]:
        return Counter(o.node for o in self.ok() if o.started >= since)  # type: ignore[misc]

    async def wait_until(self, predicate: Callable[[Load], bool], timeout_s: float, what: str) -> None:
        """Poll ``predicate(self)`` on the event loop while the load runs."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if self.failures():
                raise AssertionError(f"requests failed while waiting for {what}: {self.failures()[:5]}")
            if self._task is not None and self._task.done():
                raise AssertionError(f"load ended ({len(self.outcomes)} requests) before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; "
                                     f"{len(self.outcomes)} requests, by node {dict(self.by_node())}")
            await asyncio.sleep(0.01)

    def failures(self) -> list[str]:
        return [f"#{o.seq} {o.model} after {o.finished - o.started:.3f}s: {type(o.error).__name__}: {o.error}"
                for o in self.outcomes if o.error is not None]


def check_results(outcomes: Sequence[Outcome], inputs: Mapping[str, Sequence[np.ndarray]],
                  reference: Reference) -> None:
    """Every request succeeded with the result ONNX Runtime gives in-process."""
    failed = [f"#{o.seq} {o.model}: {type(o.error).__name__}: {o.error}" for o in outcomes if o.error is not None]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {failed[:10]}"
    expected: dict[tuple[str, int], np.ndarray] = {}
    for o in outcomes:
        key = (o.model, o.sample)
        if key not in expected:
            expected[key] = reference(o.model, inputs[o.model][o.sample])
        got = o.result.outputs["logits"]
        assert got.dtype == np.float32 and got.shape == expected[key].shape, (o.seq, got.dtype, got.shape)
        np.testing.assert_allclose(got, expected[key], rtol=RTOL, atol=ATOL,
                                   err_msg=f"request #{o.seq} ({o.model} sample {o.sample}) on {o.node}")


def start_region(processes: Any, models: Path, devices: Sequence[str] = ("d1", "d2"), *,
                 edge_args: Sequence[str] = (), device_args: Sequence[str] = ()) -> tuple[Any, list[Any]]:
    """An edge master and device nodes registered with it (its /v1/status lists them all)."""
    from tests.polling import wait_for
    from tests.processes import registered_devices

    edge = processes.edge("edge", "test", *edge_args)
    nodes = [processes.device(name, models, edge, "test", *device_args) for name in devices]
    wait_for(lambda: registered_devices(edge) >= set(devices), timeout_s=30,
             what=f"devices {list(devices)} to register with the edge master")
    return edge, nodes
