"""Who may do what on a master's control plane: the rules that tie a member to its certificate.

A master calls these with the identity the TLS adapter read off the peer certificate of the call
(None on a plaintext control plane, where nobody is authenticated and the rules cannot apply).
A member may only register, heartbeat and deregister itself: the service, id and region of the
Member it sends must be those its certificate names. Only edge masters follow the topology.
"""

from __future__ import annotations

from fogline.core.security.identity import Identity
from fogline.errors import PermissionDeniedError, UnauthenticatedError

NO_CERTIFICATE = ("this call carried no client certificate of the fleet: the control plane needs one "
                  "(issue it with `fogline certs issue`, or enrol with a join token)")


class MemberRules:
    """The control-plane rules of one master. ``secure``: the control plane runs TLS, so every call
    has an identity; plaintext (``secure=False``, an explicit ``--insecure``) authenticates nobody."""

    def __init__(self, *, secure: bool) -> None:
        self.secure = secure

    def unauthenticated(self) -> UnauthenticatedError:
        """The error of a call that needed a client certificate and had none."""
        return UnauthenticatedError(NO_CERTIFICATE)

    def _require(self, identity: Identity | None) -> Identity | None:
        if identity is None and self.secure:
            raise self.unauthenticated()
        return identity

    def check_register(self, identity: Identity | None, *, service: str, member_id: str, region: str,
                       holder: tuple[str, str] | None = None) -> None:
        """PermissionDeniedError unless the certificate names this service, id and (for a regional
        service) region, and the id is not held by a member of another service or region (``holder``:
        the registered member's (service, region), if any)."""
        who = self._require(identity)
        if who is None:
            return
        if holder is not None and (holder[0] != who.service or (who.region and holder[1] != who.region)):
            raise PermissionDeniedError(f"id {member_id[:80]!r} is held by a {holder[0]} of region {holder[1]!r} "
                                        "here: members of one master need distinct ids")
        if who.service != service:
            raise PermissionDeniedError(f"the certificate names a {who.service} ({who.uri}); "
                                        f"it cannot register as a {service[:40]!r}")
        if who.id != member_id:
            raise PermissionDeniedError(f"the certificate names {who.uri}; it cannot register as id "
                                        f"{member_id[:80]!r}")
        if who.region and who.region != region:
            raise PermissionDeniedError(f"the certificate names region {who.region!r}; it cannot register in "
                                        f"region {region[:80]!r}")

    def check_self(self, identity: Identity | None, *, member_id: str, registered: tuple[str, str] | None) -> None:
        """PermissionDeniedError unless the caller is the member ``member_id`` (as registered: its
        (service, region), when it is)."""
        who = self._require(identity)
        if who is None:
            return
        if who.id != member_id or (registered is not None and (who.service != registered[0]
                                                                or (who.region and who.region != registered[1]))):
            raise PermissionDeniedError(f"the certificate names {who.uri}; it may only act for itself, "
                                        f"not for member {member_id[:80]!r}")

    def check_watcher(self, identity: Identity | None, *, region: str) -> None:
        """PermissionDeniedError unless the caller is an edge master (of ``region``, when it names one)."""
        who = self._require(identity)
        if who is None:
            return
        if who.service != "edge":
            raise PermissionDeniedError(f"only edge masters follow the topology; the certificate names {who.uri}")
        if region and who.region != region:
            raise PermissionDeniedError(f"the certificate names region {who.region!r}, not {region[:80]!r}")

    def check_forwarding(self, forwarder: Identity | None, target: Identity) -> None:
        """PermissionDeniedError unless ``forwarder`` is an edge master enrolling or renewing a device of
        its own region (or nobody: a node enrolling itself on the enrolment port)."""
        if forwarder is None:
            return
        if forwarder.service != "edge" or target.service != "device" or forwarder.region != target.region:
            raise PermissionDeniedError(f"{forwarder.uri} may not enrol or renew {target.uri}: an edge master "
                                        "forwards for the devices of its own region only")
