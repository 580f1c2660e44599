"""A master's admin API: the operations that change the fleet, served apart from inference on the
admin port, behind an admin credential (``fogline.adapters.http.admin``).

- ``GET /v1/admin/members``: every member, with whether its health check has passed;
- ``DELETE /v1/admin/members/{id}``: evict a member now (it is back if it registers again: revoke its
  certificate to keep it out, see docs/security.md);
- ``POST /v1/admin/tokens`` (the master holding the fleet CA): a join token,
  ``{"service": "device", "region": "r", "ttl_s": 3600, "uses": 1}`` → ``{"token": ...}``;
- ``GET /v1/admin/tokens``: the live tokens, without their secrets.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fogline.adapters.http.admin import AdminRoute, read_json
from fogline.adapters.tls.enrolment import CaEnroller, Enroller
from fogline.core.control.registry import EmbeddedRegistry
from fogline.errors import InvalidInputError, ModelNotFoundError, UnavailableError


def admin_routes(registry: EmbeddedRegistry, enroller: Enroller | None) -> dict[tuple[str, str], AdminRoute]:
    """The admin routes of a master with ``registry`` (and ``enroller``, when it signs enrolments)."""

    async def members(request: web.Request) -> Any:
        return [{"id": s.member.id, "service": s.member.service, "region": s.member.region,
                 "address": s.member.address, "models": len(s.member.models), "checked": s.checked}
                for s in registry.members(include_unchecked=True)]

    async def evict(request: web.Request) -> Any:
        member_id = request.match_info["id"]
        if not registry.deregister(member_id):
            raise ModelNotFoundError(f"no member {member_id[:80]!r}")  # NOT_FOUND
        return {"evicted": member_id}

    def tokens() -> Any:
        if not isinstance(enroller, CaEnroller):
            raise UnavailableError("this master holds no fleet CA (--ca-dir): create join tokens on the one that does")
        return enroller.tokens

    async def create_token(request: web.Request) -> Any:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidInputError('expected {"service": ..., "region": ..., "ttl_s": ..., "uses": ...}')
        try:
            token = tokens().create(service=str(body.get("service", "")), region=str(body.get("region", "")),
                                    ttl_s=float(body.get("ttl_s", 3600)), uses=int(body.get("uses", 1)))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"cannot create the token: {exc}") from None
        return {"token": token}

    async def list_tokens(request: web.Request) -> Any:
        return tokens().active()

    return {("GET", "/v1/admin/members"): members, ("DELETE", "/v1/admin/members/{id}"): evict,
            ("POST", "/v1/admin/tokens"): create_token, ("GET", "/v1/admin/tokens"): list_tokens}
