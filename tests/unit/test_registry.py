"""EmbeddedRegistry: admission, register, heartbeat, TTL expiry (injected clock), watchers."""

from __future__ import annotations

import pytest

from fogline.core.control.registry import EmbeddedRegistry, Load, Member
from fogline.errors import ErrorCode, InvalidInputError


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
