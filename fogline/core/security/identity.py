"""The identity a Fogline certificate names, as a SPIFFE ID in its URI SAN.

    spiffe://fogline/<service>/<id>            cloud, worker, admin, client
    spiffe://fogline/<service>/<region>/<id>   edge, device: they belong to a region

A master reads the identity off the peer certificate of each control-plane call
(:func:`Identity.parse`) and never believes the request alone. Each certificate also carries the
DNS names :attr:`Identity.dns_names`: ``<id>[.<region>].<service>.fogline``, which a connection *to* a member
checks the server's certificate against (an address a member registered is only trusted to be that
member if the server there proves it), and ``[<region>.]<service>.fogline``, with which a child
checks that its parent is a master of the right service and region.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRUST_DOMAIN = "fogline"
SERVICES = frozenset({"cloud", "edge", "device", "worker", "admin", "client"})
REGIONAL = frozenset({"edge", "device"})
"""Services whose identity names their region."""
MEMBER_SERVICES = frozenset({"cloud", "edge", "device", "worker"})
"""Services that are processes of the fleet (not people or programs calling it)."""

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$")
NAME_RULE = "1-63 letters, digits, dots or hyphens, starting and ending with a letter or digit"
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
LABEL_RULE = "1-63 letters, digits or hyphens, starting and ending with a letter or digit"


class IdentityError(ValueError):
    """A string that is not a Fogline identity, or an id or region a certificate cannot name."""


def check_name(kind: str, value: str) -> str:
    """``value`` if it can be an id in an identity (a region: :func:`check_label`); IdentityError
    saying the rule otherwise."""
    if not _NAME.match(value):
        raise IdentityError(f"{kind} {value[:80]!r} is not valid: use {NAME_RULE}")
    return value


def check_label(kind: str, value: str) -> str:
    """``value`` if it can be a region: one DNS label (no dots, so that names stay unambiguous)."""
    if not _LABEL.match(value):
        raise IdentityError(f"{kind} {value[:80]!r} is not valid: use {LABEL_RULE}")
    return value


def group_dns_name(service: str, region: str = "") -> str:
    """``[<region>.]<service>.fogline``: the name shared by the members of a service in a region."""
    return (f"{region}." if service in REGIONAL and region else "") + f"{service}.{TRUST_DOMAIN}".lower()


@dataclass(frozen=True, kw_only=True)
class Identity:
    """A service, its id, and for an edge master or device node its region."""

    service: str
    id: str
    region: str = ""

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise IdentityError(f"service {self.service[:40]!r} is not one of {sorted(SERVICES)}")
        check_name("id", self.id)
        if self.service in REGIONAL:
            check_label("region", self.region)
        elif self.region:
            raise IdentityError(f"a {self.service} identity names no region")

    @property
    def uri(self) -> str:
        """The SPIFFE ID: ``spiffe://fogline/<service>[/<region>]/<id>``."""
        middle = f"/{self.region}" if self.service in REGIONAL else ""
        return f"spiffe://{TRUST_DOMAIN}/{self.service}{middle}/{self.id}"

    @property
    def dns_name(self) -> str:
        """The name a connection to this member verifies its server certificate against:
        ``<id>[.<region>].<service>.fogline``. NOTE: read from the right, the labels are fixed (a region
        is one label), so no two identities share a name, nor does one share its group's."""
        middle = f".{self.region}" if self.service in REGIONAL else ""
        return f"{self.id}{middle}.{self.service}.{TRUST_DOMAIN}".lower()

    @property
    def group_dns_name(self) -> str:
        """The name every member of this service (and region) carries: a child checks with it that its
        parent is a master of the right kind and region without knowing the master's id."""
        return group_dns_name(self.service, self.region)

    @property
    def dns_names(self) -> tuple[str, str]:
        """The DNS names its certificate carries: its own, and its group's."""
        return self.dns_name, self.group_dns_name

    @property
    def is_member(self) -> bool:
        """A process of the fleet, not a user or an operator."""
        return self.service in MEMBER_SERVICES

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """The identity a SPIFFE ID names; IdentityError if it is not one of this fleet's."""
        prefix = f"spiffe://{TRUST_DOMAIN}/"
        if not uri.startswith(prefix):
            raise IdentityError(f"{uri[:80]!r} is not a spiffe://{TRUST_DOMAIN}/ identity")
        parts = uri[len(prefix):].split("/")
        if len(parts) == 2 and parts[0] not in REGIONAL:
            return cls(service=parts[0], id=parts[1])
        if len(parts) == 3 and parts[0] in REGIONAL:
            return cls(service=parts[0], region=parts[1], id=parts[2])
        raise IdentityError(f"{uri[:80]!r} is not spiffe://{TRUST_DOMAIN}/<service>[/<region>]/<id>")
