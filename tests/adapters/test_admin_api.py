"""The admin REST server over real sockets: the admin token, admin certificates over real TLS, refusals
with their codes, errors as JSON, and no token in the log."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fogline.adapters.http.admin import DISABLED, MAX_BODY_BYTES, AdminAuth, AdminRoute, read_json, start_admin
from fogline.adapters.tls.http import client_ssl_context
from fogline.adapters.tls.material import TlsMaterial
from fogline.core.security.identity import Identity
from fogline.errors import ModelNotFoundError, OverloadedError, PortInUseError
from tests.adapters.test_http_tls import TinyCA

TOKEN = "s3cret-admin-token-0123456789abcdef"
SERVER = Identity(service="cloud", id="cloud-a")
ADMIN = Identity(service="admin", id="ops")
DEVICE = Identity(service="device", region="r", id="d1")


async def list_members(request: web.Request) -> Any:
    return {"members": ["d1", "d2"]}


async def remove_member(request: web.Request) -> Any:
    member = request.match_info["id"]
    if member != "d1":
        raise ModelNotFoundError(f"no member {member!r}")
    return {"removed": member}


async def echo(request: web.Request) -> Any:
    return {"got": await read_json(request)}


async def crash(request: web.Request) -> Any:
    raise RuntimeError("boom: internal detail")


async def busy(request: web.Request) -> Any:
    raise OverloadedError("busy", retry_after_s=2.4)


ROUTES: dict[tuple[str, str], AdminRoute] = {
    ("GET", "/v1/admin/members"): list_members,
    ("DELETE", "/v1/admin/members/{id}"): remove_member,
    ("POST", "/v1/admin/echo"): echo,
    ("GET", "/v1/admin/crash"): crash,
    ("GET", "/v1/admin/busy"): busy,
}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
async def token_server(token_file: Path) -> AsyncIterator[str]:
    """An admin server over plain HTTP taking the token in ``token_file``; its base URL."""
    runner, port = await start_admin(ROUTES, host="127.0.0.1", port=0, auth=AdminAuth(token_file, None), tls=None)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(method: str, url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """(status, JSON body, headers) of one request."""
    async with aiohttp.ClientSession() as http, http.request(method, url, **kwargs) as r:
        return r.status, await r.json(content_type=None), r.headers


async def test_the_token_admits(token_server: str) -> None:
    status, body, _ = await call("GET", f"{token_server}/v1/admin/members", headers=bearer(TOKEN))
    assert (status, body) == (200, {"members": ["d1", "d2"]})
    status, body, _ = await call("DELETE", f"{token_server}/v1/admin/members/d1", headers=bearer(TOKEN))
    assert (status, body) == (200, {"removed": "d1"})


async def test_no_credential_is_401_asking_for_a_bearer_token(token_server: str) -> None:
    status, body, headers = await call("GET", f"{token_server}/v1/admin/members")
    assert status == 401 and body["code"] == "UNAUTHENTICATED" and "Authorization: Bearer" in body["error"]
    assert headers["WWW-Authenticate"] == "Bearer"
    status, body, _ = await call("GET", f"{token_server}/v1/admin/nowhere")
    assert status == 401  # admitted before routing: an unknown path tells a stranger nothing


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer x", f"Bearer {TOKEN} x"])
async def test_a_wrong_token_is_401(token_server: str, header: str) -> None:
    status, body, headers = await call("GET", f"{token_server}/v1/admin/members", headers={"Authorization": header})
    assert (status, body) == (401, {"error": "admin token not valid", "code": "UNAUTHENTICATED"})
    assert headers["WWW-Authenticate"] == "Bearer"


async def test_a_changed_token_file_is_read_again(token_server: str, token_file: Path) -> None:
    token_file.write_text("a-new-token-of-a-good-length\n")
    st = token_file.stat()
    os.utime(token_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert (await call("GET", f"{token_server}/v1/admin/members", headers=bearer(TOKEN)))[0] == 401
    status, _, _ = await call("GET", f"{token_server}/v1/admin/members", headers=bearer("a-new-token-of-a-good-length"))
    assert status == 200


async def test_an_emptied_token_file_admits_no_empty_token(token_server: str, token_file: Path) -> None:
    token_file.write_text("\n")
    for header in ("Bearer ", "Bearer  ", f"Bearer {TOKEN}"):
        status, _, _ = await call("GET", f"{token_server}/v1/admin/members", headers={"Authorization": header})
        assert status == 401


async def test_an_unconfigured_admin_api_refuses_everything() -> None:
    runner, port = await start_admin(ROUTES, host="127.0.0.1", port=0, auth=AdminAuth(None, None), tls=None)
    try:
        for headers in ({}, bearer(TOKEN), bearer("")):
            status, body, _ = await call("GET", f"http://127.0.0.1:{port}/v1/admin/members", headers=headers)
            assert (status, body) == (403, {"error": DISABLED, "code": "PERMISSION_DENIED"})
    finally:
        await runner.cleanup()


def test_a_missing_token_file_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="admin token file"):
        AdminAuth(tmp_path / "absent", None)


async def test_errors_are_json_with_their_status(token_server: str) -> None:
    status, body, _ = await call("DELETE", f"{token_server}/v1/admin/members/d9", headers=bearer(TOKEN))
    assert (status, body) == (404, {"error": "no member 'd9'", "code": "NOT_FOUND"})
    status, body, headers = await call("GET", f"{token_server}/v1/admin/busy", headers=bearer(TOKEN))
    assert (status, body["code"], headers["Retry-After"]) == (429, "RESOURCE_EXHAUSTED", "2")
    status, body, _ = await call("POST", f"{token_server}/v1/admin/echo", headers=bearer(TOKEN), data=b"{not json")
    assert status == 400 and body["code"] == "INVALID_ARGUMENT"
    status, body, _ = await call("POST", f"{token_server}/v1/admin/echo", headers=bearer(TOKEN), json={"a": [1]})
    assert (status, body) == (200, {"got": {"a": [1]}})


async def test_an_unexpected_exception_is_a_generic_500_and_is_logged(token_server: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="fogline.adapters.http.admin"):
        status, body, _ = await call("GET", f"{token_server}/v1/admin/crash", headers=bearer(TOKEN))
    assert status == 500 and body["code"] == "INTERNAL" and "boom" not in body["error"]
    assert "boom: internal detail" in caplog.text


async def test_a_body_over_1_mib_is_refused(token_server: str) -> None:
    async with aiohttp.ClientSession() as http, \
            http.post(f"{token_server}/v1/admin/echo", headers=bearer(TOKEN), data=b"[" + b" " * MAX_BODY_BYTES + b"]") as r:
        assert r.status == 413


async def test_the_token_is_never_logged(token_server: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        await call("GET", f"{token_server}/v1/admin/members", headers=bearer(TOKEN))
        await call("GET", f"{token_server}/v1/admin/members", headers=bearer(TOKEN + "wrong"))
        await call("GET", f"{token_server}/v1/admin/crash", headers=bearer(TOKEN))
        await call("DELETE", f"{token_server}/v1/admin/members/d9", headers=bearer(TOKEN))
    assert "admin GET /v1/admin/members by token" in caplog.text  # the log is there, the token is not
    assert TOKEN not in caplog.text and "Bearer" not in caplog.text


async def test_a_taken_port_is_port_in_use_naming_the_flag(token_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PortInUseError, match="--admin-port"):
            await start_admin(ROUTES, host="127.0.0.1", port=taken.getsockname()[1],
                              auth=AdminAuth(token_file, None), tls=None)


# --- Over TLS ---------------------------------------------------------------------------------------

@pytest.fixture
def ca() -> TinyCA:
    return TinyCA()


@pytest.fixture
async def tls_server(ca: TinyCA, tmp_path: Path, token_file: Path) -> AsyncIterator[str]:
    """An admin server over HTTPS taking admin certificates and the token; its base URL."""
    material = ca.material(tmp_path / "server", SERVER)
    runner, port = await start_admin(ROUTES, host="127.0.0.1", port=0, auth=AdminAuth(token_file, material),
                                     tls=material)
    yield f"https://127.0.0.1:{port}"
    await runner.cleanup()


def as_client(ca: TinyCA, directory: Path, identity: Identity) -> ssl.SSLContext:
    return client_ssl_context(TlsMaterial(ca.write(directory, identity)[0]))


async def tls_call(url: str, context: ssl.SSLContext, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, \
            http.get(url, ssl=context, server_hostname=SERVER.dns_name, **kwargs) as r:
        return r.status, await r.json(content_type=None)


async def test_an_admin_certificate_admits(tls_server: str, ca: TinyCA, tmp_path: Path) -> None:
    status, body = await tls_call(f"{tls_server}/v1/admin/members", as_client(ca, tmp_path / "admin", ADMIN))
    assert (status, body) == (200, {"members": ["d1", "d2"]})


async def test_a_member_certificate_that_is_not_an_admins_is_403(tls_server: str, ca: TinyCA,
                                                                  tmp_path: Path) -> None:
    status, body = await tls_call(f"{tls_server}/v1/admin/members", as_client(ca, tmp_path / "device", DEVICE))
    assert status == 403 and body["code"] == "PERMISSION_DENIED" and DEVICE.uri in body["error"]


async def test_the_token_still_admits_over_tls_with_or_without_a_certificate(tls_server: str, ca: TinyCA,
                                                                             tmp_path: Path) -> None:
    anonymous = ssl.create_default_context(cadata=ca.pem.decode())
    anonymous.check_hostname = False
    assert (await tls_call(f"{tls_server}/v1/admin/members", anonymous, headers=bearer(TOKEN)))[0] == 200
    assert (await tls_call(f"{tls_server}/v1/admin/members", anonymous))[0] == 401
    device = as_client(ca, tmp_path / "device", DEVICE)
    assert (await tls_call(f"{tls_server}/v1/admin/members", device, headers=bearer(TOKEN)))[0] == 200


async def test_an_admin_certificate_of_another_ca_fails_the_handshake(tls_server: str, ca: TinyCA,
                                                                     tmp_path: Path) -> None:
    forged = as_client(TinyCA("forger"), tmp_path / "forged", ADMIN)
    forged.load_verify_locations(cadata=ca.pem.decode())
    with pytest.raises(aiohttp.ClientError):
        await tls_call(f"{tls_server}/v1/admin/members", forged)


async def test_tls_only_admin_api_takes_no_tokens(ca: TinyCA, tmp_path: Path) -> None:
    material = ca.material(tmp_path / "server", SERVER)
    runner, port = await start_admin(ROUTES, host="127.0.0.1", port=0, auth=AdminAuth(None, material), tls=material)
    try:
        anonymous = ssl.create_default_context(cadata=ca.pem.decode())
        anonymous.check_hostname = False
        status, body = await tls_call(f"https://127.0.0.1:{port}/v1/admin/members", anonymous, headers=bearer(TOKEN))
        assert status == 401 and "admin client certificate" in body["error"]
        admin = as_client(ca, tmp_path / "admin", ADMIN)
        assert (await tls_call(f"https://127.0.0.1:{port}/v1/admin/members", admin))[0] == 200
    finally:
        await runner.cleanup()
