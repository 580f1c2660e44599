"""The security flags of the ``fogline`` command: TLS, API keys and enrolment on every tier, the
fleet administration of the masters, and a client's TLS; and the settings they stand for."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from fogline.adapters.tls.material import ClientAuth


def add_process_flags(p: argparse.ArgumentParser) -> None:
    """TLS, API keys and enrolment: every tier takes them."""
    t = p.add_argument_group("security (docs/security.md)")
    t.add_argument("--tls-cert", type=Path, help="this process's certificate (PEM); with --tls-key and --tls-ca: "
                                                  "TLS on every server, mTLS to every peer")
    t.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    t.add_argument("--tls-ca", type=Path, help="the fleet CA certificate (PEM)")
    t.add_argument("--client-auth", choices=[c.value for c in ClientAuth], default="require",
                   help="inference clients must present a fleet certificate (require, default), or not (none; "
                        "optional: not asked for by gRPC, verified if sent to REST); the control plane always "
                        "requires one")
    t.add_argument("--api-keys", type=Path, help="keys file (`fogline keys create`): inference then needs "
                                                  "'authorization: Bearer <key>'")
    t.add_argument("--join-token-file", type=Path,
                   help="enrol with the join token in this file when --tls-cert does not exist yet "
                        "(or FOGLINE_JOIN_TOKEN); the certificate is then written to --tls-cert/--tls-key")
    t.add_argument("--enrol", help="host:port of the enrolment port of the master to enrol at")


def add_master_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a master's enrolment and admin API."""
    g = p.add_argument_group("fleet administration")
    g.add_argument("--ca-dir", type=Path, help="the fleet CA directory (`fogline certs init`): sign enrolments and "
                                               "renewals here")
    g.add_argument("--enrol-port", type=int, default=0, help="port where nodes enrol with join tokens (0 = any)")
    g.add_argument("--enrolled-cert-ttl-s", type=float, default=24 * 3600.0,
                   help="lifetime of enrolled and renewed certificates (default 1 day; renewed at 2/3)")
    g.add_argument("--admin-port", type=int, default=0, help="admin API port (0 = any free port)")
    g.add_argument("--admin-token-file", type=Path, help="file with the admin bearer token")


def process_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The security settings the flags ask for; ValueError for an incomplete set of TLS files."""
    from fogline.adapters.tls.material import TlsFiles, TlsSettings

    given = [args.tls_cert, args.tls_key, args.tls_ca]
    tls = None
    if any(given):
        if not all(given):
            raise UsageError("--tls-cert, --tls-key and --tls-ca go together: give all three")
        tls = TlsSettings(files=TlsFiles(args.tls_cert, args.tls_key, args.tls_ca),
                          client_auth=ClientAuth(args.client_auth))
    token = os.environ.get("FOGLINE_JOIN_TOKEN") or None
    if args.join_token_file:
        token = args.join_token_file.read_text().strip()
    return {"tls": tls, "api_keys": args.api_keys, "join_token": token, "enrol": args.enrol}


def master_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"ca_dir": args.ca_dir, "enrol_port": args.enrol_port, "enrolled_cert_ttl_s": args.enrolled_cert_ttl_s,
            "admin_port": args.admin_port, "admin_token_file": args.admin_token_file}


class UsageError(ValueError):
    """Flags that do not go together."""


def add_client_flags(p: argparse.ArgumentParser) -> None:
    """A client's TLS and API-key flags (default: the credentials the state file names)."""
    p.add_argument("--tls-ca", type=Path, help="CA certificate to trust (default: the running stack's)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (default: the running stack's)")
    p.add_argument("--tls-key", type=Path, help="client key (default: the running stack's)")
    p.add_argument("--api-key-file", type=Path, help="file holding an API key to send")


def client_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``tls`` and ``api_key`` for the SDK from the flags, else from the running stack's state file."""
    from fogline.sdk.client import TLS

    tls_state: dict[str, str] = {}
    if args.state.is_file():
        tls_state = json.loads(args.state.read_text()).get("tls") or {}
    ca = args.tls_ca or tls_state.get("ca")
    cert = args.tls_cert or tls_state.get("client_cert")
    key = args.tls_key or tls_state.get("client_key")
    tls = TLS(ca=ca, cert=cert, key=key) if ca else None
    api_key = args.api_key_file.read_text().strip() if args.api_key_file else None
    return {"tls": tls, "api_key": api_key}
