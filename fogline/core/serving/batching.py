"""Dynamic batching: concurrent requests with compatible shapes run as one batch.

The batcher is event-driven. When a request arrives or a batch finishes, it forms the next batch
from the queue — the oldest request plus every queued request whose non-batch shape and dtypes
match, up to ``max_batch_size`` rows — and runs it in the executor. Under light load a request
runs at once; under load requests pile up while a batch runs and go together in the next one.
``max_queue_delay_us`` optionally holds a short batch back to wait for company.

Time comes from the injected ``clock`` (seconds, monotonic) and the queue delay is waited out with
the injected ``sleep``, so a test drives both with a fake clock and never sleeps for real.

With tracing on (``spans``), each request records, under the context it was queued in, a
``fogline.queue`` span (from its arrival to the start of its batch) and a ``fogline.batch`` span (the
batch's run, with its size in requests and rows): a batch serves many traces, and each trace gets
the time its request waited and ran.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from fogline.core.observe.spans import PROCESS_SPANS, Attributes, Spans
from fogline.errors import DeadlineExceededError, FoglineError, InternalError, OverloadedError

Tensors = dict[str, np.ndarray]
RunFn = Callable[[Tensors], Tensors]
QUEUE_SPAN = "fogline.queue"
BATCH_SPAN = "fogline.batch"


@dataclass(frozen=True, kw_only=True)
class BatchingSettings:
    """How one model's requests are batched: sizes, queue delay, queue bound, instances."""

    max_batch_size: int = 0
    """Most rows in one run; 0 means the model has no batch dimension and requests run one by one."""
    max_queue_delay_us: int = 0
    """How long a batch smaller than max_batch_size may wait for more requests (0 = never wait)."""
    max_queue_size: int = 256
    """Requests that may wait; beyond it a request is refused with RESOURCE_EXHAUSTED."""
    instances: int = 1
    """Batches of this model that may run at once."""
    inline_max_us: int = 250
    """Run a batch on the event loop, not the thread pool, while batches take less CPU than this
    on average: handing a 50 µs model to a thread and back costs more than running it. 0 = never."""


class _Pending:
    __slots__ = ("deadline", "enqueued", "future", "inputs", "key", "rows", "trace")

    def __init__(self, inputs: Tensors, rows: int, key: object, future: asyncio.Future[Tensors],
                 deadline: float | None, enqueued: float, trace: tuple[object, int] | None = None) -> None:
        self.inputs = inputs
        self.rows = rows
        self.key = key
        self.future = future
        self.deadline = deadline
        self.enqueued = enqueued
        self.trace = trace
        """With tracing on and the request traced: its context and its arrival (span clock, ns)."""


@dataclass
class BatchStats:
    """Counters of what a batcher ran, for status."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    largest_batch: int = 0
    expired: int = 0
    rejected: int = 0


class DynamicBatcher:
    """Queues requests for one model and runs them in batches through ``run`` (a blocking call)."""

    def __init__(self, name: str, run: RunFn, settings: BatchingSettings, *,
                 executor: Executor | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 on_batch: Callable[[int, int, float], None] | None = None, spans: Spans = PROCESS_SPANS) -> None:
        self.name = name
        self.settings = settings
        self.stats = BatchStats()
        self._run = run
        self._executor = executor
        self._clock = clock
        self._sleep = sleep
        self._on_batch = on_batch
        self._spans = spans
        self._queue: collections.deque[_Pending] = collections.deque()
        self._running = 0
        self._running_requests = 0
        self._timer: asyncio.Task[None] | None = None  # waiting out the oldest request's queue delay
        self._flush = False  # the queue delay of the oldest request is over
        self._tasks: set[asyncio.Future[None]] = set()
        self._batch_time_s = 0.001  # moving average of wall time per batch: the retry hint
        # Moving average of CPU time per batch, for the inline decision; starts undecided.
        self._run_cpu_s = settings.inline_max_us / 1e6

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._running_requests

    async def infer(self, inputs: Tensors, *, deadline: float | None = None) -> Tensors:
        """Run ``inputs`` (already validated) in some batch; their rows come back in order."""
        if len(self._queue) >= self.settings.max_queue_size:
            self.stats.rejected += 1
            raise OverloadedError(
                f"model {self.name!r} is overloaded: {len(self._queue)} requests queued "
                f"(max_queue_size {self.settings.max_queue_size}); retry later or add capacity",
                retry_after_s=round(self._batch_time_s * 2, 4),
            )
        first = next(iter(inputs.values()))
        if self.settings.max_batch_size > 0:
            key: object = tuple((n, a.shape[1:], a.dtype.str) for n, a in inputs.items())
            rows = first.shape[0]
        else:
            key, rows = object(), 1  # a key equal to nothing else: never combined
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        spans = self._spans
        parent = spans.current() if spans.enabled else None
        trace = None if parent is None else (parent, spans.now_ns())
        self._queue.append(_Pending(inputs, rows, key, future, deadline, self._clock(), trace))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._running < self.settings.instances and self._queue:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                break  # only dead requests were queued
            if self._run_cpu_s * 1e6 < self.settings.inline_max_us:
                self._run_inline(batch)
                continue
            self._running += 1
            self._running_requests += len(batch)
            task = asyncio.ensure_future(self._run_batch(batch))
            self._tasks.add(task)  # NOTE: the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    def _take_batch(self) -> list[_Pending] | None:
        """The next batch; [] if only dead requests were queued; None to wait for company."""
        now = self._clock()
        limit = max(self.settings.max_batch_size, 1)
        share = limit
        if self.settings.instances > 1 and limit > 1:
            # Share the queue among the instances: the first to come free must not take it all
            # while the others finish and then idle. A soft limit: the oldest request always goes.
            queued_rows = sum(item.rows for item in self._queue)
            share = min(limit, -(-queued_rows // self.settings.instances))
        batch: list[_Pending] = []
        rest: collections.deque[_Pending] = collections.deque()
        rows = 0
        while self._queue and rows < share:
            item = self._queue.popleft()
            if item.future.done():  # caller gave up
                continue
            if item.deadline is not None and now >= item.deadline:
                self.stats.expired += 1
                err = DeadlineExceededError(f"deadline passed while queued for model {self.name!r}")
                item.future.set_exception(err)
                if item.trace is not None:
                    self._trace_expired(item, err)
                continue
            if batch and (item.key != batch[0].key or rows + item.rows > limit):
                rest.append(item)
                continue
            batch.append(item)
            rows += item.rows
        rest.extend(self._queue)
        self._queue = rest
        delay_s = self.settings.max_queue_delay_us / 1e6
        if batch and rows < limit and not self._flush and now < batch[0].enqueued + delay_s:
            # Hold the batch back for company; put it back in front, in order.
            self._queue.extendleft(reversed(batch))
            if self._timer is None:
                self._timer = asyncio.ensure_future(self._hold(batch[0].enqueued + delay_s - now))
            return None
        self._flush = False
        return batch

    async def _hold(self, delay_s: float) -> None:
        """Wait out the queue delay, then run the held batch with whatever company it found."""
        await self._sleep(delay_s)
        self._timer = None
        self._flush = True
        self._dispatch()

    async def _run_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started_ns = self._spans.now_ns() if self._spans.enabled else 0
        error: Exception | None = None
        try:
            results, elapsed_s = await loop.run_in_executor(self._executor, self._run_timed, batch)
        except Exception as exc:
            error = exc
            self._fail(batch, exc)
        else:
            self._deliver(batch, results, elapsed_s)
        finally:
            self._running -= 1
            self._running_requests -= len(batch)
            if started_ns:
                self._trace(batch, started_ns, error)
            self._dispatch()

    def _run_inline(self, batch: list[_Pending]) -> None:
        started_ns = self._spans.now_ns() if self._spans.enabled else 0
        error: Exception | None = None
        try:
            results, elapsed_s = self._run_timed(batch)
        except Exception as exc:
            error = exc
            self._fail(batch, exc)
        else:
            self._deliver(batch, results, elapsed_s)
        if started_ns:
            self._trace(batch, started_ns, error)

    def _trace(self, batch: list[_Pending], started_ns: int, error: Exception | None) -> None:
        """Record each traced request's wait in the queue and the batch's run, under its own context."""
        spans, ended_ns = self._spans, self._spans.now_ns()
        model: Attributes = {"fogline.model": self.name}
        attributes: Attributes = {**model, "fogline.batch.size": len(batch),
                                  "fogline.batch.rows": sum(i.rows for i in batch)}
        failure = None if error is None else _failure(error, self.name)
        for item in batch:
            if item.trace is None:
                continue
            parent, enqueued_ns = item.trace
            spans.record(QUEUE_SPAN, parent, enqueued_ns, started_ns, model)
            spans.record(BATCH_SPAN, parent, started_ns, ended_ns, attributes, error=failure)

    def _trace_expired(self, item: _Pending, err: FoglineError) -> None:
        assert item.trace is not None
        parent, enqueued_ns = item.trace
        self._spans.record(QUEUE_SPAN, parent, enqueued_ns, self._spans.now_ns(), {"fogline.model": self.name},
                           error=(err.code.value, err.message))

    def _deliver(self, batch: list[_Pending], results: list[Tensors], elapsed_s: float) -> None:
        self._record(batch, elapsed_s)
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def _fail(self, batch: list[_Pending], exc: Exception) -> None:
        self._record(batch, self._batch_time_s)
        err = _as_error(exc, self.name)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(err)

    def _record(self, batch: list[_Pending], elapsed_s: float) -> None:
        self._batch_time_s += 0.2 * (elapsed_s - self._batch_time_s)
        rows = sum(item.rows for item in batch)
        stats = self.stats
        stats.batches += 1
        stats.requests += len(batch)
        stats.rows += rows
        stats.largest_batch = max(stats.largest_batch, len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch), rows, elapsed_s)

    def _run_timed(self, batch: list[_Pending]) -> tuple[list[Tensors], float]:
        """Run in a pool thread or inline; timed here, not around the hand-off. The inline decision
        uses this thread's CPU time: wall time on a saturated CPU counts preemption, which would
        push a 20 µs model into the pool exactly when hand-offs cost most."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        results = self._run_split(batch)
        # Clipped, so one outlier (a GC pause) does not flip a fast model; sustained slowness does.
        cpu_s = min(time.thread_time() - cpu_started, 4 * self.settings.inline_max_us / 1e6)
        self._run_cpu_s += 0.2 * (cpu_s - self._run_cpu_s)
        return results, time.perf_counter() - started

    def _run_split(self, batch: list[_Pending]) -> list[Tensors]:
        """Concatenate, run and split."""
        if len(batch) == 1:
            return [self._run(batch[0].inputs)]
        names = batch[0].inputs.keys()
        feeds = {n: np.concatenate([item.inputs[n] for item in batch]) for n in names}
        outputs = self._run(feeds)
        total = sum(item.rows for item in batch)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != total:
                raise InternalError(
                    f"model {self.name!r} output {name!r} has shape {list(value.shape)}, not batch-major "
                    f"over {total} rows; set max_batch_size = 0 for this model")
        results: list[Tensors] = []
        start = 0
        for item in batch:
            end = start + item.rows
            results.append({n: v[start:end] for n, v in outputs.items()})
            start = end
        return results


def _as_error(exc: Exception, model: str) -> FoglineError:
    """What a batch's requests fail with when running it raised ``exc``."""
    return exc if isinstance(exc, FoglineError) else InternalError(
        f"model {model!r} failed to run: {type(exc).__name__}: {exc}")


def _failure(exc: Exception, model: str) -> tuple[str, str]:
    """(code, message) of a failed batch, for its spans."""
    err = _as_error(exc, model)
    return err.code.value, err.message
