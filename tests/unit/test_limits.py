"""Control limits: what a member may claim (names, addresses), the register rate per caller (token
buckets on an injected clock, with bounded memory), and an edge master's report to the cloud within them."""

from __future__ import annotations

import logging

import pytest

from fogline.core.control.limits import ControlLimits, RateLimiter, check_name, check_names, parse_host_port
from fogline.errors import ErrorCode, InvalidInputError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_defaults_are_the_documented_ones_and_nonsense_is_refused() -> None:
    limits = ControlLimits()
    assert (limits.max_members, limits.max_models_per_member, limits.max_name_length, limits.max_meta_entries,
            limits.register_rate_per_s, limits.register_burst) == (1024, 256, 128, 16, 20.0, 50)
    for bad in ({"max_members": 0}, {"register_rate_per_s": 0.0}, {"max_meta_entries": -1}, {"register_burst": 0}):
        with pytest.raises(ValueError):
            ControlLimits(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [
    ("dev-a:8001", ("dev-a", 8001)),
    ("dev_a.fogline.local:1", ("dev_a.fogline.local", 1)),
    ("host.example.:443", ("host.example.", 443)),
    ("10.0.0.7:65535", ("10.0.0.7", 65535)),
    ("[::1]:9000", ("::1", 9000)),
    ("[fe80::1%eth0]:9000", ("fe80::1%eth0", 9000)),
])
def test_host_port_takes_hostnames_ipv4_and_bracketed_ipv6(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("dev-a", "is not host:port"),
    (":8001", "is not host:port"),
    ("dev-a:", "has no valid port"),
    ("dev-a:0", "has no valid port"),
    ("dev-a:65536", "has no valid port"),
    ("dev-a:80a", "has no valid port"),
    ("dev-a:٣٣", "has no valid port"),  # digits, but not ASCII ones
    ("dev-a:000000080", "has no valid port"),
    ("::1:9000", "has no valid host"),  # IPv6 needs brackets
    ("[not-ip]:9000", "has no valid IP address"),
    ("10.0.0.300:1", "has no valid IP address"),
    ("-dev:1", "has no valid host"),
    ("dev a:1", "has no valid host"),
    ("a..b:1", "has no valid host"),
    ("http://dev-a:1", "has no valid host"),
    (f"{'a' * 64}:1", "has no valid host"),
    (f"{'.'.join(['abc'] * 70)}:1", "has no valid host"),  # 279 characters: longer than DNS allows
])
def test_anything_else_is_refused_saying_what_form_to_use(text: str, why: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_host_port(text, "member address")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert caught.value.message.startswith("member address ") and why in caught.value.message
    assert "hostname, an IPv4 address or a [bracketed] IPv6 address, and a port from 1 to 65535" in caught.value.message


def test_a_huge_address_is_echoed_bounded() -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_host_port("h" * 100_000 + ":1")
    assert len(caught.value.message) < 400 and "(100002 characters)" in caught.value.message


def test_names_are_bounded_printable_and_not_empty_unless_allowed() -> None:
    limits = ControlLimits(max_name_length=8)
    check_name("model name", "12345678", limits)
    check_name("region", "", limits, allow_empty=True)
    for value, why in (("", "model name is empty"), ("123456789", "is 9 characters long; at most 8"),
                       ("a\nb", "holds control characters")):
        with pytest.raises(InvalidInputError, match=why):
            check_name("model name", value, limits)
    assert limits.name_fits("12345678") and not limits.name_fits("123456789") and not limits.name_fits("a\tb")


def test_a_name_list_is_bounded_in_count_and_in_each_name() -> None:
    limits = ControlLimits(max_models_per_member=2, max_name_length=4)
    check_names("model name", ["a", "b"], limits)
    with pytest.raises(InvalidInputError, match="3 model names listed; at most 2 are allowed per member"):
        check_names("model name", ["a", "b", "c"], limits)
    with pytest.raises(InvalidInputError, match="model name 'toolong' is 7 characters long"):
        check_names("model name", ["a", "toolong"], limits)


def test_a_caller_gets_its_burst_then_the_rate_and_is_told_how_long_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.try_acquire("a") for _ in range(3)] == [None, None, None]
    assert limiter.try_acquire("a") == pytest.approx(0.5)
    assert limiter.try_acquire("b") is None  # another caller has its own bucket
    clock.now += 0.25
    assert limiter.try_acquire("a") == pytest.approx(0.25)  # half a token back: still refused
    clock.now += 0.25
    assert limiter.try_acquire("a") is None
    assert limiter.try_acquire("a") == pytest.approx(0.5)


def test_idle_callers_are_forgotten_once_their_bucket_is_full_again() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 5, clock=clock)
    for key in ("a", "b", "c"):
        limiter.try_acquire(key)
    assert len(limiter) == 3
    clock.now += 0.4
    limiter.try_acquire("c")
    clock.now += 0.2  # a and b idle 0.6 s > 5 / 10 per s: full again; c only 0.2 s
    limiter.try_acquire("d")
    assert len(limiter) == 2


def test_beyond_max_keys_new_callers_share_one_bucket_and_cannot_reset_a_throttled_one() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, max_keys=2, clock=clock)
    assert [limiter.try_acquire("a") for _ in range(3)][-1] is not None  # a is throttled
    limiter.try_acquire("b")
    assert [limiter.try_acquire(f"new-{i}") for i in range(3)] == [None, None, pytest.approx(1.0)]
    assert len(limiter) == 2  # the new keys were never remembered
    assert limiter.try_acquire("a") is not None  # still throttled: nobody evicted it


def test_an_edges_report_to_the_cloud_always_fits_the_cloud_masters_limits(caplog: pytest.LogCaptureFixture) -> None:
    from edge_master import EdgeMaster, EdgeSettings
    from fogline.adapters.grpc.control import CONTROL_MAX_MESSAGE_BYTES, member_to_proto
    from fogline.core.control.registry import EmbeddedRegistry
    from fogline.core.escalation.catalog import Catalog, CatalogEntry, Placement

    edge = EdgeMaster(EdgeSettings(edge_id="e1", region="r"))
    edge.endpoints = {"grpc": "10.0.0.1:8001", "http": "10.0.0.1:8002"}
    names = [f"model-{i:05d}-{'x' * 100}" for i in range(40_000)] + ["y" * 200]
    edge.router.catalog = Catalog(CatalogEntry(name=n, placement=Placement.CLOUD, cloud_model="mlp") for n in names)
    with caplog.at_level(logging.WARNING, logger="edge_master.master"):
        reported = edge._member()
        assert edge._member() == reported  # deterministic
    limits = ControlLimits()
    assert sorted(reported.models) == sorted(names[:-1])[: limits.max_models_per_member]
    assert member_to_proto(reported).ByteSize() < CONTROL_MAX_MESSAGE_BYTES
    EmbeddedRegistry(services=frozenset({"edge"})).admit(reported)  # what the cloud master takes
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "39745 are left out" in warnings[0]
