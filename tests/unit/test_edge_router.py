"""EdgeRouter: DESIGN.md §2 carried out over real dispatchers with fake upstreams and an injected clock —
placement, hints, overflow, failover, the cascade, and never waiting on a dead uplink."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from fogline.core.control.registry import Load, Member, MemberState
from fogline.core.escalation.catalog import Catalog, CatalogEntry, Placement
from fogline.core.escalation.hardness import HardnessRule
from fogline.core.escalation.router import EdgeRouter, EdgeRoutingSettings
from fogline.core.routing.breaker import BreakerSettings, CircuitBreaker
from fogline.core.routing.dispatch import Dispatcher, DispatchSettings
from fogline.core.routing.pool import EndpointPool
from fogline.errors import (
    DeadlineExceededError,
    ErrorCode,
    FoglineError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
)

EASY, HARD, NAN = b"easy", b"hard", b"nan"
PROBS = {EASY: [[0.95, 0.05]], HARD: [[0.55, 0.45]], NAN: [[np.nan, np.nan]]}  # NAN: what NaN inputs give
DIGITS = CatalogEntry(name="digits", placement=Placement.CASCADE, device_model="small", cloud_model="large",
                      rule=HardnessRule(max_prob_below=0.8))
CLOUD_ONLY = CatalogEntry(name="big", placement=Placement.CLOUD, cloud_model="large")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """A device node or GPU worker: answers ``(node, model, input)``, fails with ``error``, or hangs."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.error: FoglineError | None = None
        self.hang = False
        self.requests: list[bytes] = []

    async def infer(self, request: bytes, timeout_s: float | None) -> tuple[str, str, bytes]:
        self.requests.append(request)
        if self.hang:
            await asyncio.sleep(timeout_s or 0)
            raise DeadlineExceededError(f"{self.node}: no answer within {timeout_s}")
        if self.error is not None:
            raise self.error
        model, _, data = request.partition(b"|")
        return self.node, model.decode(), data


class Messages:
    """Requests are ``model|input``; the small model's probabilities depend on the input."""

    def retarget(self, request: bytes, model: str) -> bytes:
        return model.encode() + b"|" + request.partition(b"|")[2]

    def probabilities(self, response: tuple[str, str, bytes], output: str | None) -> np.ndarray:
        if response[2] == b"garbage":
            return np.array([[3.0, -1.0]])
        return np.array(PROBS[response[2]])


class TooLarge(Messages):
    """Messages of which every retargeted one is over the message limit."""

    def retarget(self, request: bytes, model: str) -> bytes:
        raise OverloadedError("too large")


# One failure opens a circuit for exactly 1 s: crisp outcomes on the fake clock.
BREAKER = BreakerSettings(consecutive_failures=1, base_open_s=1.0, open_jitter=0.0)


def pool(upstreams: dict[str, Upstream], models: frozenset[str], service: str, clock: Clock) -> EndpointPool[Upstream]:
    p: EndpointPool[Upstream] = EndpointPool(lambda s: upstreams[s.member.id], lambda u: None,
                                             make_breaker=lambda: CircuitBreaker(BREAKER, clock=clock))
    p.sync([MemberState(Member(id=n, service=service, address=f"{n}:1", models=models), Load(), 0.0, 0.0)
            for n in upstreams])
    return p


class Edge:
    def __init__(self, *, device_models: tuple[str, ...] = ("small", "mlp", "cnn"),
                 cloud_models: tuple[str, ...] = ("large", "mlp"), devices: int = 2, workers: int = 1,
                 attempt_timeout_s: float = 1.0, **settings: float) -> None:
        self.clock = Clock()
        self.devices = {f"d{i}": Upstream(f"d{i}") for i in range(devices)}
        self.workers = {f"w{i}": Upstream(f"w{i}") for i in range(workers)}
        rng = random.Random(1)
        dispatch = DispatchSettings(attempt_timeout_s=attempt_timeout_s)
        self.router: EdgeRouter[tuple[str, str, bytes]] = EdgeRouter(
            Dispatcher(pool(self.devices, frozenset(device_models), "device", self.clock), "region 'r'",  # type: ignore[arg-type]
                       dispatch, rng=rng, clock=self.clock),
            Dispatcher(pool(self.workers, frozenset(cloud_models), "worker", self.clock), "the cloud tier",  # type: ignore[arg-type]
                       dispatch, rng=rng, clock=self.clock),
            Messages(), catalog=Catalog([DIGITS, CLOUD_ONLY]), clock=self.clock,
            settings=EdgeRoutingSettings(**settings))  # type: ignore[arg-type]

    async def infer(self, model: str, data: bytes = EASY, **kwargs: object):  # type: ignore[no-untyped-def]
        return await self.router.infer(model, model.encode() + b"|" + data, **kwargs)  # type: ignore[arg-type]

    def cloud_calls(self) -> int:
        return sum(len(w.requests) for w in self.workers.values())

    def fail_devices(self, error: FoglineError) -> None:
        for d in self.devices.values():
            d.error = error


async def test_a_device_placed_model_runs_on_a_device_and_never_in_the_cloud() -> None:
    edge = Edge()
    for _ in range(20):
        routed = await edge.infer("mlp")
        assert (routed.tier, routed.route, routed.model) == ("device", "placement", "mlp")
        assert routed.node in edge.devices and not routed.degraded
    assert edge.cloud_calls() == 0


async def test_a_cloud_placed_model_runs_on_a_worker_under_its_cloud_name() -> None:
    edge = Edge()
    routed = await edge.infer("big")
    assert (routed.tier, routed.node, routed.route, routed.model) == ("cloud", "w0", "placement", "large")
    assert edge.workers["w0"].requests == [b"large|easy"]  # retargeted to the model the worker holds


async def test_a_model_held_only_by_workers_runs_in_the_cloud_without_a_catalog_entry() -> None:
    routed = await Edge().infer("large")
    assert (routed.tier, routed.route) == ("cloud", "placement")


async def test_hints_choose_the_tier_and_a_bad_hint_says_what_to_send() -> None:
    edge = Edge()
    assert (await edge.infer("mlp", hint="cloud")).tier == "cloud"
    assert (await edge.infer("digits", HARD, hint="device")).route == "hint"  # a hint skips the cascade
    with pytest.raises(InvalidInputError, match="must be one of 'auto', 'device', 'cloud'"):
        await edge.infer("mlp", hint="gpu")
    with pytest.raises(InvalidInputError, match="cannot run on the cloud tier"):
        await edge.infer("cnn", hint="cloud")


async def test_when_every_device_is_over_its_queue_limit_requests_overflow_to_the_cloud() -> None:
    edge = Edge(device_queue_limit=1)
    for endpoint in edge.router.devices.pool.endpoints.values():
        endpoint.outstanding = 1
    routed = await edge.infer("mlp")
    assert (routed.tier, routed.route) == ("cloud", "overflow")
    with pytest.raises(OverloadedError, match="over their queue limit, and it has no cloud variant") as info:
        await edge.infer("cnn")
    assert info.value.retry_after_s is not None


async def test_devices_answering_resource_exhausted_overflow_to_the_cloud() -> None:
    edge = Edge()
    edge.fail_devices(OverloadedError("queue full"))
    routed = await edge.infer("mlp")
    assert (routed.tier, routed.route) == ("cloud", "overflow")


async def test_devices_that_fail_send_requests_to_the_cloud_as_failover() -> None:
    edge = Edge()
    edge.fail_devices(UnavailableError("down"))
    assert (await edge.infer("mlp")).route == "failover"
    # Both devices' circuits are now open: the next request goes straight to the cloud.
    before = sum(len(d.requests) for d in edge.devices.values())
    assert (await edge.infer("mlp")).route == "failover"
    assert sum(len(d.requests) for d in edge.devices.values()) == before


async def test_a_device_only_model_tries_devices_with_open_circuits_rather_than_none() -> None:
    edge = Edge()
    edge.fail_devices(UnavailableError("down"))
    with pytest.raises(UnavailableError):
        await edge.infer("cnn")
    assert not any(e.breaker.accepting for e in edge.router.devices.pool.endpoints.values())
    edge.fail_devices(None)  # type: ignore[arg-type]
    assert (await edge.infer("cnn")).tier == "device"  # the pool is in panic: every device is routable


async def test_a_cascade_keeps_easy_answers_and_escalates_hard_ones() -> None:
    edge = Edge()
    easy = await edge.infer("digits", EASY)
    assert (easy.tier, easy.route, easy.model, easy.attempts) == ("device", "cascade-easy", "small", 1)
    assert edge.cloud_calls() == 0
    hard = await edge.infer("digits", HARD)
    assert (hard.tier, hard.node, hard.route, hard.model) == ("cloud", "w0", "cascade-hard", "large")
    assert hard.attempts == 2 and hard.response == ("w0", "large", HARD)


async def test_a_dead_uplink_degrades_cascades_and_fails_cloud_models_at_once() -> None:
    edge = Edge()
    edge.workers["w0"].error = UnavailableError("connection refused")
    routed = await edge.infer("digits", HARD)
    assert (routed.tier, routed.route, routed.degraded) == ("device", "degraded", True)
    assert routed.response == (routed.node, "small", HARD)  # the device's own answer
    assert not edge.router.uplink_up
    calls = edge.cloud_calls()
    assert (await edge.infer("digits", HARD)).degraded  # answered without trying the cloud again
    with pytest.raises(UnavailableError, match="cloud tier is unreachable"):
        await edge.infer("big")
    assert edge.cloud_calls() == calls
    # After the open period a request probes the worker; it works again, so escalation resumes.
    edge.workers["w0"].error = None
    edge.clock.now += 1.0
    assert (await edge.infer("digits", HARD)).route == "cascade-hard"
    assert edge.router.uplink_up


async def test_easy_inputs_do_not_spend_the_probes_of_a_half_open_worker() -> None:
    edge = Edge()
    edge.workers["w0"].error = UnavailableError("down")
    assert (await edge.infer("digits", HARD)).degraded
    edge.workers["w0"].error = None
    edge.clock.now += 1.0
    for _ in range(5):
        assert (await edge.infer("digits", EASY)).route == "cascade-easy"
    assert (await edge.infer("digits", HARD)).route == "cascade-hard"  # a probe slot was still there


async def test_a_hung_worker_degrades_a_cascade_and_its_circuit_opens() -> None:
    edge = Edge(attempt_timeout_s=0.02, escalation_timeout_s=0.5)
    edge.workers["w0"].hang = True
    routed = await asyncio.wait_for(edge.infer("digits", HARD), 2.0)
    assert routed.route == "degraded" and not edge.router.uplink_up


async def test_the_escalation_timeout_bounds_the_wait_for_the_cloud() -> None:
    edge = Edge(escalation_timeout_s=0.02)
    edge.workers["w0"].hang = True
    routed = await asyncio.wait_for(edge.infer("digits", HARD), 2.0)
    assert routed.route == "degraded"
    assert edge.router.uplink_up  # our own short wait says nothing about the worker


async def test_a_clients_short_deadline_does_not_open_the_workers_circuit() -> None:
    edge = Edge()
    edge.workers["w0"].error = DeadlineExceededError("the caller's deadline passed")
    with pytest.raises(DeadlineExceededError):
        await edge.infer("big", deadline=edge.clock.now + 0.01)
    assert edge.router.uplink_up


async def test_bad_input_from_the_cloud_is_the_clients_error_not_a_degraded_answer() -> None:
    edge = Edge()
    edge.workers["w0"].error = InvalidInputError("wrong shape")
    with pytest.raises(InvalidInputError):
        await edge.infer("digits", HARD)
    assert edge.router.uplink_up


async def test_an_answer_with_nan_cannot_be_judged_so_it_escalates_or_is_degraded() -> None:
    edge = Edge()
    hard = await edge.infer("digits", NAN)
    assert (hard.tier, hard.route, hard.model) == ("cloud", "cascade-hard", "large")
    edge.workers["w0"].error = UnavailableError("connection refused")
    degraded = await edge.infer("digits", NAN)
    assert (degraded.tier, degraded.route, degraded.degraded) == ("device", "degraded", True)
    assert degraded.response == (degraded.node, "small", NAN)


async def test_an_oversized_retarget_is_refused_before_any_device_or_worker_sees_it() -> None:
    edge = Edge()
    edge.router.messages = TooLarge()  # type: ignore[assignment]
    for model in ("digits", "big"):
        with pytest.raises(OverloadedError, match="too large"):
            await edge.infer(model, EASY)
    assert edge.cloud_calls() == 0 and not any(d.requests for d in edge.devices.values())


async def test_a_cascade_whose_device_model_gives_no_probabilities_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="cascade 'digits' cannot judge 'small'"):
        await Edge().infer("digits", b"garbage")


async def test_unknown_models_are_not_found_and_an_empty_region_is_unavailable() -> None:
    with pytest.raises(ModelNotFoundError, match=r"available: \['big', 'cnn', 'digits', 'large', 'mlp', 'small'\]"):
        await Edge().infer("resnet")
    with pytest.raises(UnavailableError, match="no device node is registered") as info:
        await Edge(devices=0, workers=0).infer("mlp")
    assert info.value.code is ErrorCode.UNAVAILABLE


async def test_without_devices_or_cloud_a_cascade_is_unavailable_and_says_why() -> None:
    edge = Edge(devices=0)
    assert (await edge.infer("digits", EASY)).route == "failover"  # the cloud model alone
    edge = Edge(devices=0, workers=0, device_models=(), cloud_models=())
    with pytest.raises(UnavailableError, match="no healthy device node holds model 'digits'"):
        await edge.infer("digits", EASY)
