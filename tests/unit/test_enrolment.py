"""The CA's enrolment rules: a join token enrols an identity the CA never issued, once; only fleet
members renew, and never a revoked one."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogline.adapters.tls.certs import FleetCA, identity_of, make_csr
from fogline.adapters.tls.enrolment import CaEnroller
from fogline.core.security.identity import Identity
from fogline.core.security.tokens import JoinTokens
from fogline.errors import PermissionDeniedError, UnauthenticatedError

DEVICE = Identity(service="device", id="d7", region="r1")


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    FleetCA.init(tmp_path / "ca")
    return tmp_path / "ca"


def token(ca_dir: Path, uses: int = 1) -> str:
    return JoinTokens(ca_dir / "tokens").create(service="device", region="r1", ttl_s=60, uses=uses)


async def test_a_token_enrols_a_new_identity_once(ca_dir: Path) -> None:
    enroller = CaEnroller(ca_dir, ttl_s=60)
    issued = await enroller.enrol(token(ca_dir, uses=2), DEVICE, make_csr(DEVICE)[0])
    assert identity_of(issued.certificate) == DEVICE and issued.ca == FleetCA.load(ca_dir).cert_pem
    with pytest.raises(PermissionDeniedError, match="renews with it"):  # a second token holder, same id
        await enroller.enrol(token(ca_dir), DEVICE, make_csr(DEVICE)[0])


async def test_a_token_cannot_take_over_an_id_issued_by_hand(ca_dir: Path) -> None:
    FleetCA.load(ca_dir).issue(DEVICE, ttl_s=60)
    tok = token(ca_dir)
    with pytest.raises(PermissionDeniedError):
        await CaEnroller(ca_dir).enrol(tok, DEVICE, make_csr(DEVICE)[0])
    other = Identity(service="device", id="d8", region="r1")
    await CaEnroller(ca_dir).enrol(tok, other, make_csr(other)[0])  # the refused try spent no use


async def test_a_garbage_csr_spends_no_use_and_a_spent_token_is_refused(ca_dir: Path) -> None:
    tok, enroller = token(ca_dir), CaEnroller(ca_dir)
    with pytest.raises(Exception, match="signing request"):
        await enroller.enrol(tok, DEVICE, b"not a csr")
    await enroller.enrol(tok, DEVICE, make_csr(DEVICE)[0])
    other = Identity(service="device", id="d9", region="r1")
    with pytest.raises(UnauthenticatedError):
        await enroller.enrol(tok, other, make_csr(other)[0])


@pytest.mark.parametrize("who", [Identity(service="admin", id="ops"), Identity(service="client", id="user")])
async def test_only_fleet_members_renew(ca_dir: Path, who: Identity) -> None:
    with pytest.raises(PermissionDeniedError, match="only fleet members"):
        await CaEnroller(ca_dir).renew(who, make_csr(who)[0])


async def test_a_revoked_member_is_not_renewed(ca_dir: Path) -> None:
    enroller = CaEnroller(ca_dir, ttl_s=60)
    assert identity_of((await enroller.renew(DEVICE, make_csr(DEVICE)[0])).certificate) == DEVICE
    FleetCA.load(ca_dir).ledger.revoke(DEVICE.uri)
    with pytest.raises(PermissionDeniedError, match="revoked"):
        await enroller.renew(DEVICE, make_csr(DEVICE)[0])


def test_names_are_unambiguous_and_regional() -> None:
    a = Identity(service="device", id="x", region="a")
    b = Identity(service="device", id="x", region="b")
    assert a.dns_name != b.dns_name  # a device of region b does not pass for region a's
    edge_named_like_a_region = Identity(service="edge", id="r1", region="r2")
    assert edge_named_like_a_region.dns_name not in Identity(service="edge", id="e", region="r1").dns_names
    with pytest.raises(ValueError):
        Identity(service="device", id="x", region="a.b")  # a region is one label
