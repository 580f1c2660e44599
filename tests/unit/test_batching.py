"""DynamicBatcher: batches what is compatible, bounds its queue, honours deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fogline.core.serving.batching import BatchingSettings, DynamicBatcher
from fogline.errors import DeadlineExceededError, InternalError, OverloadedError


class GatedModel:
    """A model that doubles its input, records batch sizes, and can be held mid-run."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        assert self.gate.wait(5)
        self.batches.append(feeds["x"].shape[0])
        return {"y": feeds["x"] * 2}


class Clock:
    """A fake monotonic clock: ``sleep`` returns once ``advance`` has moved the time past its end."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + delay_s, woken))
        await woken

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [(end, woken) for end, woken in self.sleepers if end <= self.now]
        self.sleepers = [(end, woken) for end, woken in self.sleepers if end > self.now]
        for _, woken in due:
            if not woken.done():
                woken.set_result(None)


async def settle() -> None:
    """Let every task that can run without time passing run."""
    for _ in range(5):
        await asyncio.sleep(0)


def threaded(**settings: int) -> BatchingSettings:
    """Settings that always use the thread pool, so a test can hold a batch mid-run."""
    return BatchingSettings(inline_max_us=0, **settings)


@pytest.fixture
def executor():
    with ThreadPoolExecutor(4) as pool:
        yield pool


def rows(n: int, value: float = 1.0, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, np.float32)}


async def test_a_lone_request_runs_at_once_without_waiting(executor) -> None:
    model = GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=8), executor=executor)
    out = await asyncio.wait_for(batcher.infer(rows(2, 3.0)), 2)
    np.testing.assert_array_equal(out["y"], np.full((2, 3), 6.0))
    assert model.batches == [2]


async def test_requests_queued_behind_a_running_batch_go_together_and_split_back_in_order(executor) -> None:
    model = GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=16), executor=executor)
    model.gate.clear()
    first = asyncio.ensure_future(batcher.infer(rows(1, 0.0)))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 2)
    rest = [asyncio.ensure_future(batcher.infer(rows(1 + i % 2, float(i)))) for i in range(6)]
    await asyncio.sleep(0)
    assert batcher.queue_depth == 6
    model.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert model.batches == [1, 9]  # the six waiting requests (9 rows) ran as one batch
    for i, out in enumerate(results[1:]):
        np.testing.assert_array_equal(out["y"], np.full((1 + i % 2, 3), 2.0 * i))
    assert batcher.stats.batches == 2 and batcher.stats.requests == 7 and batcher.stats.largest_batch == 6


async def test_batches_respect_max_batch_size_and_never_mix_shapes(executor) -> None:
    model = GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=4), executor=executor)
    model.gate.clear()
    first = asyncio.ensure_future(batcher.infer(rows(1)))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 2)
    wide = [asyncio.ensure_future(batcher.infer(rows(1, width=5))) for _ in range(2)]
    narrow = [asyncio.ensure_future(batcher.infer(rows(1))) for _ in range(6)]
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *wide, *narrow), 5)
    assert max(model.batches) <= 4
    assert sum(model.batches) == 9
    assert sorted(model.batches) == [1, 2, 2, 4]  # first; wide pair; narrow 4 + 2


async def test_unbatched_model_runs_requests_one_by_one(executor) -> None:
    model = GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=0), executor=executor)
    await asyncio.gather(*(batcher.infer(rows(1)) for _ in range(5)))
    assert model.batches == [1] * 5


async def test_full_queue_is_refused_with_resource_exhausted_and_a_retry_hint(executor) -> None:
    model = GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=1, max_queue_size=2), executor=executor)
    model.gate.clear()
    running = asyncio.ensure_future(batcher.infer(rows(1)))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 2)
    queued = [asyncio.ensure_future(batcher.infer(rows(1))) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError, match="max_queue_size 2") as info:
        await batcher.infer(rows(1))
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(running, *queued), 5)  # the others are served
    assert batcher.stats.rejected == 1


async def test_a_request_whose_deadline_passed_in_the_queue_is_dropped_unrun(executor) -> None:
    now = [100.0]
    model = GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=4), executor=executor,
                             clock=lambda: now[0])
    model.gate.clear()
    running = asyncio.ensure_future(batcher.infer(rows(1)))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 2)
    late = asyncio.ensure_future(batcher.infer(rows(1), deadline=100.5))
    on_time = asyncio.ensure_future(batcher.infer(rows(1), deadline=200.0))
    await asyncio.sleep(0)
    now[0] = 101.0
    model.gate.set()
    with pytest.raises(DeadlineExceededError):
        await asyncio.wait_for(late, 5)
    await asyncio.wait_for(asyncio.gather(running, on_time), 5)
    assert model.batches == [1, 1]
    assert batcher.stats.expired == 1


async def test_a_failing_run_fails_every_request_of_the_batch_and_the_batcher_keeps_going(executor) -> None:
    calls = []

    def flaky(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {"y": feeds["x"]}

    batcher = DynamicBatcher("m", flaky, threaded(max_batch_size=4), executor=executor)
    with pytest.raises(InternalError, match="model 'm' failed to run: RuntimeError: boom"):
        await batcher.infer(rows(1))
    out = await batcher.infer(rows(1))
    assert out["y"].shape == (1, 3)
    assert batcher.in_flight == 0 and batcher.queue_depth == 0


async def test_queue_delay_holds_a_short_batch_back_for_company(executor) -> None:
    clock, model = Clock(), GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=8, max_queue_delay_us=250_000),
                             executor=executor, clock=clock, sleep=clock.sleep)
    first = asyncio.ensure_future(batcher.infer(rows(1)))
    await settle()
    assert model.batches == []  # held back, waiting for company
    assert [end for end, _ in clock.sleepers] == [100.25]  # until the first request's delay is over
    clock.advance(0.125)
    second = asyncio.ensure_future(batcher.infer(rows(1)))
    await settle()
    assert model.batches == []  # still within the delay
    clock.advance(0.125)
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert model.batches == [2]


async def test_a_full_batch_does_not_wait_for_the_queue_delay(executor) -> None:
    clock, model = Clock(), GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=2, max_queue_delay_us=30_000_000),
                             executor=executor, clock=clock, sleep=clock.sleep)
    await asyncio.wait_for(asyncio.gather(batcher.infer(rows(1)), batcher.infer(rows(1))), 5)
    assert model.batches == [2]


async def test_a_caller_that_gave_up_is_not_run(executor) -> None:
    model = GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=1), executor=executor)
    model.gate.clear()
    running = asyncio.ensure_future(batcher.infer(rows(1)))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 2)
    abandoned = asyncio.ensure_future(batcher.infer(rows(1)))
    await asyncio.sleep(0)
    abandoned.cancel()
    model.gate.set()
    await asyncio.wait_for(running, 5)
    await asyncio.wait_for(batcher.infer(rows(1)), 5)
    assert model.batches == [1, 1]  # the abandoned request never ran


async def test_output_that_is_not_batch_major_is_an_internal_error_naming_the_fix(executor) -> None:
    def bad(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.zeros(3)}

    gate, entered = threading.Event(), threading.Event()

    def slow_then_bad(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entered.set()
        gate.wait(5)
        return bad(feeds)

    batcher = DynamicBatcher("m", slow_then_bad, threaded(max_batch_size=4), executor=executor)
    first = asyncio.ensure_future(batcher.infer(rows(1)))
    await asyncio.get_running_loop().run_in_executor(None, entered.wait, 2)
    pair = [asyncio.ensure_future(batcher.infer(rows(1))) for _ in range(2)]
    await asyncio.sleep(0)
    gate.set()
    await first
    for fut in pair:
        with pytest.raises(InternalError, match="max_batch_size = 0"):
            await fut


async def test_a_fast_model_runs_inline_on_the_event_loop_and_a_slow_one_in_the_pool(executor) -> None:
    threads: list[int] = []
    delay = [0.0]

    def model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        end = time.thread_time() + delay[0]
        while time.thread_time() < end:  # a slow model burns CPU; sleeping would not count
            pass
        return {"y": feeds["x"]}

    batcher = DynamicBatcher("m", model, BatchingSettings(max_batch_size=4, inline_max_us=500), executor=executor)
    for _ in range(30):
        await batcher.infer(rows(1))
    assert threads[0] != threading.get_ident()  # no history yet: the pool
    assert threads[-1] == threading.get_ident()  # measured fast: inline
    delay[0] = 0.02
    for _ in range(10):
        await batcher.infer(rows(1))
    assert threads[-1] != threading.get_ident()  # measured slow again: back to the pool


async def test_a_queue_is_shared_among_idle_instances_not_given_to_one(executor) -> None:
    model = GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=32, instances=2), executor=executor)
    model.gate.clear()
    both = [asyncio.ensure_future(batcher.infer(rows(1))) for _ in range(2)]  # occupy both instances
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(batcher.infer(rows(1))) for _ in range(10)]
    await asyncio.sleep(0)
    assert batcher.queue_depth == 10
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(*both, *waiting), 5)
    assert sum(model.batches) == 12
    assert max(model.batches) <= 5  # no instance took more than its share of the ten waiting


async def test_a_lone_request_larger_than_its_share_still_runs(executor) -> None:
    model = GatedModel()
    batcher = DynamicBatcher("m", model, threaded(max_batch_size=8, instances=4), executor=executor)
    out = await asyncio.wait_for(batcher.infer(rows(3)), 5)  # share of 4 instances would be 1 row
    assert out["y"].shape == (3, 3) and model.batches == [3]
