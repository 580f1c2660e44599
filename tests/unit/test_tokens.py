"""Join tokens: single and counted uses, expiry, the grant they carry, and that only hashes are stored."""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from fogline.core.security.tokens import (
    INVALID_TOKEN,
    TOKEN_PREFIX,
    JoinTokens,
    TokenGrant,
    token_id,
)
from fogline.errors import ErrorCode, PermissionDeniedError, UnauthenticatedError


@dataclass
class Clock:
    """A clock the test moves."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(tmp_path: Path, clock: Clock) -> JoinTokens:
    return JoinTokens(tmp_path / "tokens", clock=clock)


def refused(tokens: JoinTokens, token: str, service: str = "device", region: str = "eu-1") -> UnauthenticatedError:
    with pytest.raises(UnauthenticatedError) as caught:
        tokens.redeem(token, service=service, region=region)
    assert caught.value.code is ErrorCode.UNAUTHENTICATED
    assert str(caught.value) == INVALID_TOKEN, "one message for every invalid token"
    return caught.value


def test_a_token_has_the_prefix_and_is_random(tokens: JoinTokens) -> None:
    a = tokens.create(service="device", region="eu-1", ttl_s=60)
    b = tokens.create(service="device", region="eu-1", ttl_s=60)
    assert a.startswith(TOKEN_PREFIX) and len(a) == len(TOKEN_PREFIX) + 43
    assert a != b


def test_a_single_use_token_works_once(tokens: JoinTokens) -> None:
    token = tokens.create(service="device", region="eu-1", ttl_s=60)
    assert tokens.redeem(token, service="device", region="eu-1") == TokenGrant(service="device", region="eu-1")
    refused(tokens, token)
    assert not list(tokens.directory.iterdir()), "a spent token's file is deleted"


def test_a_counted_token_works_as_often_as_it_allows(tokens: JoinTokens) -> None:
    token = tokens.create(service="edge", region="eu-1", ttl_s=60, uses=3)
    for uses_left in (2, 1, 0):
        assert tokens.redeem(token, service="edge", region="eu-1") == TokenGrant("edge", "eu-1")
        assert [t["uses_left"] for t in tokens.active()] == ([uses_left] if uses_left else [])
    refused(tokens, token, "edge")


def test_an_expired_token_is_refused_and_deleted(tokens: JoinTokens, clock: Clock) -> None:
    token = tokens.create(service="device", region="eu-1", ttl_s=60, uses=5)
    clock.now += 59.9
    tokens.redeem(token, service="device", region="eu-1")
    clock.now += 0.1
    refused(tokens, token)
    assert not list(tokens.directory.iterdir())


def test_another_service_is_denied_without_using_the_token(tokens: JoinTokens) -> None:
    token = tokens.create(service="device", region="eu-1", ttl_s=60)
    with pytest.raises(PermissionDeniedError) as caught:
        tokens.redeem(token, service="edge", region="eu-1")
    assert caught.value.code is ErrorCode.PERMISSION_DENIED
    assert str(caught.value) == "this join token enrols a device in region 'eu-1', not a edge in region 'eu-1'"
    assert tokens.redeem(token, service="device", region="eu-1") == TokenGrant("device", "eu-1")


def test_another_region_is_denied_without_using_the_token(tokens: JoinTokens) -> None:
    token = tokens.create(service="device", region="eu-1", ttl_s=60)
    with pytest.raises(PermissionDeniedError, match="in region 'eu-1', not a device in region 'us-2'"):
        tokens.redeem(token, service="device", region="us-2")
    assert tokens.active()[0]["uses_left"] == 1
    tokens.redeem(token, service="device", region="eu-1")


def test_a_worker_token_names_no_region(tokens: JoinTokens) -> None:
    token = tokens.create(service="worker", ttl_s=60, uses=2)
    assert tokens.redeem(token, service="worker", region="") == TokenGrant("worker", "")
    assert tokens.redeem(token, service="worker", region="default") == TokenGrant("worker", ""), \
        "a worker's identity has no region: the one it runs with does not count"


def test_garbage_tokens_are_refused_alike(tokens: JoinTokens) -> None:
    tokens.create(service="device", region="eu-1", ttl_s=60)
    unknown = TOKEN_PREFIX + "A" * 43
    for garbage in ("", "x", TOKEN_PREFIX, TOKEN_PREFIX + "x", unknown, unknown + "A", "../" + unknown,
                    TOKEN_PREFIX + "/" * 43, unknown.replace(TOKEN_PREFIX, "other-jt-")):
        refused(tokens, garbage)
    assert len(tokens.active()) == 1


def test_create_checks_its_arguments(tokens: JoinTokens) -> None:
    bad = [
        ({"service": "cloud", "ttl_s": 60}, "enrols one of"),
        ({"service": "admin", "ttl_s": 60}, "enrols one of"),
        ({"service": "device", "ttl_s": 60}, "needs its region"),
        ({"service": "edge", "region": "", "ttl_s": 60}, "needs its region"),
        ({"service": "device", "region": "bad region", "ttl_s": 60}, "region 'bad region' is not valid"),
        ({"service": "worker", "region": "eu-1", "ttl_s": 60}, "belongs to no region"),
        ({"service": "device", "region": "eu-1", "ttl_s": 0}, "positive number of seconds"),
        ({"service": "device", "region": "eu-1", "ttl_s": float("inf")}, "positive number of seconds"),
        ({"service": "device", "region": "eu-1", "ttl_s": 60, "uses": 0}, "at least 1 use"),
        ({"service": "device", "region": "eu-1", "ttl_s": 60, "uses": True}, "at least 1 use"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            tokens.create(**kwargs)  # type: ignore[arg-type]
    assert not list(tokens.directory.iterdir())


def test_only_the_hash_is_stored(tokens: JoinTokens) -> None:
    token = tokens.create(service="device", region="eu-1", ttl_s=60, uses=2)
    tokens.redeem(token, service="device", region="eu-1")  # a rewrite, too, stores no secret
    digest = hashlib.sha256(token.encode()).hexdigest()
    (path,) = tokens.directory.iterdir()
    assert path.name == f"{digest}.json"
    secret = token[len(TOKEN_PREFIX):]
    for stored in tokens.directory.rglob("*"):
        assert secret.encode() not in stored.read_bytes()
        assert secret not in stored.name
    record = json.loads(path.read_text())
    assert record == {"service": "device", "region": "eu-1", "expires_at": 1_000_060.0, "uses_left": 1,
                      "created_at": 1_000_000.0}


def test_files_are_private(tokens: JoinTokens) -> None:
    token = tokens.create(service="device", region="eu-1", ttl_s=60, uses=2)
    tokens.redeem(token, service="device", region="eu-1")
    assert stat.S_IMODE(tokens.directory.stat().st_mode) == 0o700
    (path,) = tokens.directory.iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_world_readable_directory_is_made_private(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    directory.mkdir(mode=0o755)
    JoinTokens(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_active_lists_live_tokens_without_secrets_and_prunes(tokens: JoinTokens, clock: Clock) -> None:
    soon = tokens.create(service="device", region="eu-1", ttl_s=10)
    later = tokens.create(service="worker", ttl_s=100, uses=4)
    assert tokens.active() == [
        {"id": token_id(soon), "service": "device", "region": "eu-1", "expires_at": 1_000_010.0, "uses_left": 1},
        {"id": token_id(later), "service": "worker", "region": "", "expires_at": 1_000_100.0, "uses_left": 4},
    ]
    assert len(token_id(soon)) == 12 and soon not in json.dumps(tokens.active())
    clock.now += 10
    assert [t["id"] for t in tokens.active()] == [token_id(later)]
    assert len(list(tokens.directory.iterdir())) == 1


def test_a_corrupt_file_is_ignored(tokens: JoinTokens) -> None:
    (tokens.directory / f"{'0' * 64}.json").write_text("{not json")
    (tokens.directory / f"{'1' * 64}.json").write_text('{"service": 1}')
    token = tokens.create(service="device", region="eu-1", ttl_s=60)
    assert [t["id"] for t in tokens.active()] == [token_id(token)]


def test_the_token_is_never_logged(tokens: JoinTokens, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = tokens.create(service="device", region="eu-1", ttl_s=60, uses=2)
    tokens.redeem(token, service="device", region="eu-1")
    with pytest.raises(PermissionDeniedError) as denied:
        tokens.redeem(token, service="edge", region="eu-1")
    secret = token[len(TOKEN_PREFIX):]
    assert caplog.records, "creating and redeeming are logged, by id"
    assert all(secret not in record.getMessage() for record in caplog.records)
    assert secret not in str(denied.value)
    assert secret not in str(refused(tokens, token[:-1] + ("A" if token[-1] != "A" else "B")))
