"""The control-plane rules that hold each member to the identity its certificate names."""

from __future__ import annotations

import pytest

from fogline.core.security.identity import Identity
from fogline.core.security.members import MemberRules
from fogline.errors import PermissionDeniedError, UnauthenticatedError

RULES = MemberRules(secure=True)
D1 = Identity(service="device", id="d1", region="a")
EDGE_A = Identity(service="edge", id="e1", region="a")


def test_a_member_registers_as_itself_only() -> None:
    RULES.check_register(D1, service="device", member_id="d1", region="a")
    for claim in ({"service": "worker", "member_id": "d1", "region": "a"},
                  {"service": "edge", "member_id": "d1", "region": "a"},
                  {"service": "device", "member_id": "d2", "region": "a"},
                  {"service": "device", "member_id": "d1", "region": "b"}):
        with pytest.raises(PermissionDeniedError):
            RULES.check_register(D1, **claim)


def test_an_id_held_by_a_member_of_another_region_or_service_is_refused() -> None:
    RULES.check_register(EDGE_A, service="edge", member_id="e1", region="a", holder=("edge", "a"))  # re-register
    other_region = Identity(service="edge", id="e1", region="b")
    with pytest.raises(PermissionDeniedError, match="distinct ids"):
        RULES.check_register(other_region, service="edge", member_id="e1", region="b", holder=("edge", "a"))
    worker = Identity(service="worker", id="e1")
    with pytest.raises(PermissionDeniedError):
        RULES.check_register(worker, service="worker", member_id="e1", region="", holder=("edge", "a"))


def test_only_the_member_itself_heartbeats_or_deregisters() -> None:
    RULES.check_self(D1, member_id="d1", registered=("device", "a"))
    RULES.check_self(D1, member_id="d1", registered=None)  # unknown: heartbeat answers known=false
    with pytest.raises(PermissionDeniedError):
        RULES.check_self(D1, member_id="d2", registered=("device", "a"))
    with pytest.raises(PermissionDeniedError):  # the same id in another region is another member
        RULES.check_self(Identity(service="device", id="d1", region="b"), member_id="d1", registered=("device", "a"))
    with pytest.raises(PermissionDeniedError):
        RULES.check_self(Identity(service="worker", id="d1"), member_id="d1", registered=("device", "a"))


def test_only_edge_masters_follow_the_topology_of_their_region() -> None:
    RULES.check_watcher(EDGE_A, region="a")
    with pytest.raises(PermissionDeniedError):
        RULES.check_watcher(D1, region="a")
    with pytest.raises(PermissionDeniedError):
        RULES.check_watcher(EDGE_A, region="b")


def test_an_edge_forwards_enrolments_of_its_own_regions_devices_only() -> None:
    RULES.check_forwarding(None, D1)  # a node enrolling itself
    RULES.check_forwarding(EDGE_A, D1)
    for forwarder, target in ((Identity(service="edge", id="e2", region="b"), D1),
                              (EDGE_A, Identity(service="worker", id="w1")),
                              (Identity(service="device", id="d9", region="a"), D1)):
        with pytest.raises(PermissionDeniedError):
            RULES.check_forwarding(forwarder, target)


def test_a_secure_control_plane_needs_a_certificate_and_a_plaintext_one_checks_nothing() -> None:
    with pytest.raises(UnauthenticatedError, match="client certificate"):
        RULES.check_register(None, service="device", member_id="d1", region="a")
    MemberRules(secure=False).check_register(None, service="device", member_id="anything", region="")
