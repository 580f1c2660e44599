"""Routing: power-of-two-choices, the consistent-hash ring, the pool's bookkeeping."""

from __future__ import annotations

import random
from collections import Counter

from fogline.core.control.registry import Load, Member, MemberState
from fogline.core.routing.pool import Endpoint, EndpointPool, HashRing, power_of_two_choices


def state(mid: str, models: tuple[str, ...] = ("m",), address: str = "", queue: int = 0) -> MemberState:
    member = Member(id=mid, service="device", address=address or f"{mid}:1", models=frozenset(models))
    return MemberState(member, Load(queue_depth=queue), 0.0, 0.0)


def test_power_of_two_choices_never_picks_the_busier_of_its_two_samples() -> None:
    rng = random.Random(7)
    endpoints = [Endpoint(state(f"d{i}"), None) for i in range(10)]
    for i, endpoint in enumerate(endpoints):
        endpoint.outstanding = i
    picks = Counter(power_of_two_choices(endpoints, rng).id for _ in range(2000))
    assert "d9" not in picks  # the busiest loses every comparison
    assert picks["d0"] > picks["d5"] > 0  # less loaded endpoints win more often


def test_power_of_two_choices_breaks_ties_on_reported_queue_depth() -> None:
    a, b = Endpoint(state("a", queue=5), None), Endpoint(state("b", queue=0), None)
    assert all(power_of_two_choices([a, b], random.Random(i)).id == "b" for i in range(20))


def test_power_of_two_choices_spreads_an_idle_pool_evenly() -> None:
    rng = random.Random(1)
    endpoints = [Endpoint(state(f"d{i}"), None) for i in range(4)]
    picks = Counter(power_of_two_choices(endpoints, rng).id for _ in range(4000))
    assert min(picks.values()) > 700


def test_hash_ring_is_stable_and_moves_only_the_keys_of_a_member_that_leaves() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    before = HashRing(["a", "b", "c", "d"])
    after = HashRing(["a", "b", "c"])
    assert [before.preference(k)[0] for k in keys] == [HashRing(["d", "c", "b", "a"]).preference(k)[0] for k in keys]
    moved = [k for k in keys if before.preference(k)[0] != after.preference(k)[0]]
    assert all(before.preference(k)[0] == "d" for k in moved)
    share = Counter(before.preference(k)[0] for k in keys)
    assert min(share.values()) > 2000 / 4 * 0.6  # virtual nodes keep the shares near even


def test_hash_ring_preference_lists_every_member_once() -> None:
    ring = HashRing(["a", "b", "c"], vnodes=8)
    assert sorted(ring.preference("k")) == ["a", "b", "c"]
    assert HashRing([]).preference("k") == []


def test_pool_follows_membership_and_closes_what_leaves() -> None:
    made, closed = [], []
    pool: EndpointPool[str] = EndpointPool(lambda s: made.append(s.member.id) or s.member.id, closed.append)
    pool.sync([state("a", ("m", "n")), state("b", ("m",))])
    assert [e.id for e in pool.for_model("m")] == ["a", "b"]
    assert [e.id for e in pool.for_model("n")] == ["a"]
    assert pool.models() == ["m", "n"]
    a = pool.endpoints["a"]
    a.outstanding = 3
    pool.sync([state("a", ("m", "n")), state("c", ("m",))])
    assert pool.endpoints["a"] is a and a.outstanding == 3  # load bookkeeping survives a resync
    assert closed == ["b"]
    pool.sync([state("a", ("m",), address="elsewhere:2")])
    assert closed == ["b", "a", "c"] and made == ["a", "b", "c", "a"]  # a moved: new connection
    assert pool.for_model("n") == []
