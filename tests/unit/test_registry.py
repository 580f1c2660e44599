"""EmbeddedRegistry: admission, register, heartbeat, TTL expiry (injected clock), watchers."""

from __future__ import annotations

import pytest

from fogline.core.control.limits import ControlLimits
from fogline.core.control.registry import EmbeddedRegistry, Load, Member
from fogline.errors import ErrorCode, InvalidInputError, OverloadedError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def member(mid: str, models: tuple[str, ...] = ("m",)) -> Member:
    return Member(id=mid, service="device", address=f"{mid}:1", models=frozenset(models))


def test_member_that_misses_heartbeats_for_its_ttl_is_expired_and_watchers_hear_of_it() -> None:
    clock = Clock()
    registry = EmbeddedRegistry(ttl_s=3.0, heartbeat_interval_s=1.0, clock=clock)
    changes = []
    registry.watch(lambda: changes.append(sorted(s.member.id for s in registry.members())))
    registry.register(member("a"))
    registry.register(member("b"))
    clock.now += 2.5
    assert registry.heartbeat("a", Load(in_flight=2, queue_depth=1))
    clock.now += 1.0
    assert registry.expire() == ["b"]
    assert registry.get("a").load == Load(in_flight=2, queue_depth=1)
    assert changes == [["a"], ["a", "b"], ["a"]]
    clock.now += 1.9  # 2.9 s since a's heartbeat: still inside its ttl
    assert registry.expire() == []
    clock.now += 0.2
    assert registry.expire() == ["a"]


def test_heartbeat_from_an_unknown_member_asks_it_to_register_again() -> None:
    registry = EmbeddedRegistry(clock=Clock())
    assert registry.heartbeat("ghost", Load()) is False


def test_reregistering_unchanged_is_quiet_but_a_changed_model_list_is_a_change() -> None:
    registry = EmbeddedRegistry(clock=Clock())
    changes = []
    registry.watch(lambda: changes.append(1))
    registry.register(member("a"))
    registry.register(member("a"))
    assert len(changes) == 1
    registry.heartbeat("a", Load(), ["m", "n"])
    assert registry.get("a").member.models == {"m", "n"}
    assert len(changes) == 2


def test_deregister_removes_at_once() -> None:
    registry = EmbeddedRegistry(clock=Clock())
    registry.register(member("a"))
    assert registry.deregister("a") is True
    assert registry.deregister("a") is False
    assert registry.members("device") == []


def test_heartbeat_interval_must_be_shorter_than_the_ttl() -> None:
    with pytest.raises(ValueError):
        EmbeddedRegistry(ttl_s=1.0, heartbeat_interval_s=1.0)


def test_members_from_an_external_registry_are_set_per_service_and_never_expired() -> None:
    from fogline.core.control.registry import EmbeddedRegistry, Load, Member

    now = [0.0]
    registry = EmbeddedRegistry(ttl_s=3.0, clock=lambda: now[0])
    changes = []
    registry.watch(lambda: changes.append(sorted(s.member.id for s in registry.members())))
    a, b = Member(id="a", service="device", address="h:1"), Member(id="b", service="device", address="h:2")
    registry.register(Member(id="w", service="worker", address="h:3"))
    registry.sync_service("device", [a, b])
    registry.heartbeat("a", Load(in_flight=4))
    registry.sync_service("device", [a, b])  # nothing changed: no watcher call, load kept
    assert changes == [["w"], ["a", "b", "w"]]
    assert registry.get("a").load == Load(in_flight=4)  # type: ignore[union-attr]
    now[0] = 100.0
    assert registry.expire() == ["w"]  # only the embedded member missed its heartbeats
    registry.sync_service("device", [b])
    assert [s.member.id for s in registry.members("device")] == ["b"]


@pytest.mark.parametrize(("joining", "message"), [
    (Member(id="", service="device", address="h:1", region="r"), "member id and address are required"),
    (Member(id="x", service="device", address="", region="r"), "member id and address are required"),
    (Member(id="x", service="worker", address="h:1", region="r"), "service 'worker' cannot join here; expected ['device']"),
    (Member(id="x", service="device", address="h:1", region="elsewhere"),
     "member of region 'elsewhere' cannot join region 'r'"),
])
def test_admit_refuses_a_member_that_cannot_join_and_registers_nothing(joining: Member, message: str) -> None:
    registry = EmbeddedRegistry(services=frozenset({"device"}), region="r", clock=Clock())
    with pytest.raises(InvalidInputError) as caught:
        registry.admit(joining)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT and caught.value.message == message
    assert registry.members() == []


def test_admit_registers_a_member_of_the_region_or_of_none() -> None:
    registry = EmbeddedRegistry(services=frozenset({"device"}), region="r", clock=Clock())
    registry.admit(Member(id="a", service="device", address="h:1", region="r"))
    registry.admit(Member(id="b", service="device", address="h:2"))  # names no region: taken in any
    assert sorted(s.member.id for s in registry.members("device")) == ["a", "b"]


def test_a_registry_of_no_region_admits_members_of_every_region() -> None:
    registry = EmbeddedRegistry(services=frozenset({"edge", "worker"}), clock=Clock())
    registry.admit(Member(id="e1", service="edge", address="h:1", region="a"))
    registry.admit(Member(id="w1", service="worker", address="h:2", region="b"))
    assert [s.member.id for s in registry.members()] == ["e1", "w1"]


# --- What a member may claim, and how often a caller may register ---------------------------------

def joiner(**changes: object) -> Member:
    fields: dict[str, object] = {"id": "d1", "service": "device", "address": "dev-1:8001", "region": "r",
                                 "models": frozenset({"m"}), "http_address": "dev-1:8002"}
    return Member(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "says"), [
    ({"address": "dev-1"}, "member address 'dev-1' is not host:port"),
    ({"address": "dev-1:0"}, "member address 'dev-1:0' has no valid port"),
    ({"address": "::1:80"}, "member address '::1:80' has no valid host"),
    ({"http_address": "dev-1:99999"}, "member http_address 'dev-1:99999' has no valid port"),
    ({"id": "x" * 129}, "member id 'xxxx"),
    ({"id": "a\nb"}, "member id 'a\\nb' holds control characters"),
    ({"region": "r" * 200}, "region 'rrrr"),
    ({"models": frozenset({"m" * 129})}, "model name 'mmm"),
    ({"models": frozenset({""})}, "model name is empty"),
    ({"models": frozenset(f"m{i}" for i in range(257))}, "257 model names listed; at most 256 are allowed per member"),
    ({"meta": {f"k{i}": "v" for i in range(17)}}, "17 meta entries; at most 16 are allowed per member"),
    ({"meta": {"k" * 129: "v"}}, "meta key 'kkk"),
    ({"meta": {"k": "v" * 129}}, "meta 'k' value 'vvv"),
    ({"capacity": -1}, "capacity -1 is negative; report 0 for none"),
])
def test_admit_refuses_claims_beyond_the_limits_saying_what_to_fix(changes: dict[str, object], says: str) -> None:
    registry = EmbeddedRegistry(services=frozenset({"device"}), region="r", clock=Clock())
    with pytest.raises(InvalidInputError) as caught:
        registry.admit(joiner(**changes))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT and says in caught.value.message
    assert len(caught.value.message) < 400  # names are echoed bounded
    assert registry.members(include_unchecked=True) == []


def test_admit_takes_a_member_at_its_limits_and_one_without_http_address() -> None:
    registry = EmbeddedRegistry(region="r", clock=Clock())
    registry.admit(joiner(id="d" * 128, address="[::1]:8001", models=frozenset(f"m{i}" for i in range(256)),
                          meta={f"k{i}": "v" * 128 for i in range(16)}))
    registry.admit(joiner(id="d2", address="10.0.0.2:8001", http_address=""))
    assert len(registry.members()) == 2


def test_a_full_master_refuses_a_new_member_but_takes_a_known_one_again() -> None:
    registry = EmbeddedRegistry(limits=ControlLimits(max_members=2), clock=Clock())
    registry.admit(joiner(id="a"))
    registry.admit(joiner(id="b"))
    with pytest.raises(OverloadedError) as caught:
        registry.admit(joiner(id="c"))
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "this master holds its maximum of 2 members" in caught.value.message
    assert caught.value.retry_after_s == registry.ttl_s
    registry.admit(joiner(id="a", models=frozenset({"m", "n"})))  # re-registering is no new member
    assert registry.get("c") is None and registry.get("a").member.models == {"m", "n"}  # type: ignore[union-attr]


def test_a_caller_that_registers_too_often_is_told_when_to_retry_and_others_are_not_held_up() -> None:
    clock = Clock()
    registry = EmbeddedRegistry(limits=ControlLimits(register_rate_per_s=2.0, register_burst=2), clock=clock)
    registry.admit(joiner(id="a"), caller="10.0.0.9")
    registry.admit(joiner(id="b"), caller="10.0.0.9")
    with pytest.raises(OverloadedError) as caught:
        registry.admit(joiner(id="c"), caller="10.0.0.9")
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED and caught.value.retry_after_s == pytest.approx(0.5)
    assert "too many registrations from this caller" in caught.value.message
    assert registry.get("c") is None
    registry.admit(joiner(id="c"), caller="spiffe://fogline/device/r/c")  # another caller
    clock.now += 0.5
    registry.admit(joiner(id="d"), caller="10.0.0.9")
    assert sorted(s.member.id for s in registry.members()) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("models", [["m" * 129], [f"m{i}" for i in range(257)], ["ok", "bad\x00"]])
def test_a_heartbeat_with_models_beyond_the_limits_is_refused_and_changes_nothing(models: list[str]) -> None:
    clock = Clock()
    registry = EmbeddedRegistry(clock=clock)
    registry.register(member("a"))
    changes = []
    registry.watch(lambda: changes.append(1))
    clock.now += 1.0
    with pytest.raises(InvalidInputError):
        registry.heartbeat("a", Load(in_flight=7), models)
    state = registry.get("a")
    assert state is not None and state.member.models == {"m"} and state.load == Load() and state.last_seen == 1000.0
    assert changes == []


# --- Health gating ---------------------------------------------------------------------------------

def test_with_checks_required_a_new_member_is_routed_to_only_once_marked_checked() -> None:
    registry = EmbeddedRegistry(require_check=True, clock=Clock())
    seen = []
    registry.watch(lambda: seen.append(sorted(s.member.id for s in registry.members())))
    registry.admit(joiner(id="a"))
    assert registry.members() == [] and seen == [[]]
    assert [s.member.id for s in registry.members("device", include_unchecked=True)] == ["a"]
    assert [s.member.id for s in registry.unchecked()] == ["a"]
    assert registry.heartbeat("a", Load(in_flight=1)) is True  # an unchecked member stays alive
    assert registry.mark_checked("a", "elsewhere:1") is False  # not where it registered
    assert registry.members() == [] and seen == [[]]
    assert registry.mark_checked("a", "dev-1:8001") is True
    assert seen == [[], ["a"]] and registry.unchecked() == []
    assert registry.get("a").checked is True  # type: ignore[union-attr]
    assert registry.mark_checked("a", "dev-1:8001") is True and len(seen) == 2  # no change: no call
    assert registry.mark_checked("ghost", "dev-1:8001") is False


def test_a_checked_member_stays_checked_with_new_models_but_not_at_a_new_address() -> None:
    registry = EmbeddedRegistry(require_check=True, clock=Clock())
    registry.admit(joiner(id="a"))
    registry.mark_checked("a", "dev-1:8001")
    registry.admit(joiner(id="a", models=frozenset({"m", "n"})))
    registry.heartbeat("a", Load(), ["m", "n", "o"])
    assert [s.member.models for s in registry.members()] == [{"m", "n", "o"}]
    registry.admit(joiner(id="a", address="attacker:8001"))
    assert registry.members() == [] and [s.member.address for s in registry.unchecked()] == ["attacker:8001"]
    assert registry.mark_checked("a", "dev-1:8001") is False  # a check of the old address proves nothing


def test_members_from_an_external_registry_and_without_required_checks_are_checked_at_once() -> None:
    gated = EmbeddedRegistry(require_check=True, clock=Clock())
    gated.sync_service("device", [joiner(id="c1")])
    assert [s.member.id for s in gated.members()] == ["c1"]
    gated.admit(joiner(id="c2"))
    gated.sync_service("device", [joiner(id="c1"), joiner(id="c2")])  # Consul's health checks vouch for it
    assert sorted(s.member.id for s in gated.members()) == ["c1", "c2"]
    plain = EmbeddedRegistry(clock=Clock())
    plain.admit(joiner(id="a"))
    assert [s.member.id for s in plain.members()] == ["a"] and plain.unchecked() == []
