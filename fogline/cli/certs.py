"""``fogline certs``: create the fleet CA, issue certificates from it, and create join tokens.

    fogline certs init DIR
    fogline certs issue --ca DIR --service edge --region eu-1 --id edge-a --host 10.0.0.5 --out OUTDIR
    fogline certs token --ca DIR --service device --region eu-1 --ttl 1h [--uses N]
    fogline certs tokens --ca DIR
    fogline certs revoke --ca DIR --service device --region eu-1 --id dev-7

``token`` prints only the token on stdout, so that a script can capture it; all else goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fogline.core.security.identity import REGIONAL, SERVICES, Identity, IdentityError

if TYPE_CHECKING:
    from fogline.adapters.tls.certs import FleetCA

TOKEN_SERVICES = ("device", "edge", "worker")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_ttl(text: str) -> float:
    """A duration in seconds from ``90s``, ``15m``, ``1h``, ``30d`` or plain seconds (argparse type)."""
    match = _TTL.match(text)
    seconds = float(match[1]) * _UNITS_S[match[2] or "s"] if match else 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a duration: use e.g. 90s, 15m, 1h, 30d "
                                         f"or plain seconds, more than 0")
    return seconds


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fogline certs`` and its subcommands."""
    certs = sub.add_parser("certs", help="the fleet CA: create it, issue certificates, create join tokens")
    commands = certs.add_subparsers(dest="certs_command", required=True)

    init = commands.add_parser("init", help="create a new fleet CA in a directory")
    init.add_argument("directory", type=Path, help="where ca.pem, ca.key and tokens/ go (refused if a CA is there)")

    issue = commands.add_parser("issue", help="issue a certificate and key for one identity")
    _ca_flag(issue)
    issue.add_argument("--service", required=True, choices=sorted(SERVICES))
    issue.add_argument("--id", required=True, help="the member's (or person's) id")
    issue.add_argument("--region", default="", help="its region (edge and device only)")
    issue.add_argument("--host", action="append", default=[],
                       help="another name it is reached by: a DNS name or an IP address (repeatable)")
    issue.add_argument("--ttl", type=parse_ttl, default="365d", help="validity, e.g. 30d (default 365d)")
    issue.add_argument("--out", type=Path, required=True, help="directory for cert.pem, key.pem, ca.pem")

    token = commands.add_parser("token", help="create a join token; prints only the token on stdout")
    _ca_flag(token)
    token.add_argument("--service", required=True, choices=TOKEN_SERVICES)
    token.add_argument("--region", default="", help="the region it enrols into (edge and device)")
    token.add_argument("--ttl", type=parse_ttl, required=True, help="how long it can be redeemed, e.g. 1h")
    token.add_argument("--uses", type=int, default=1, help="how many nodes may enrol with it (default 1)")

    tokens = commands.add_parser("tokens", help="list the active join tokens (never their secret)")
    _ca_flag(tokens)

    revoke = commands.add_parser("revoke", help="refuse an identity every renewal and enrolment from now on "
                                                "(its certificate dies at its expiry; evict it too)")
    _ca_flag(revoke)
    revoke.add_argument("--service", required=True, choices=sorted(SERVICES))
    revoke.add_argument("--id", required=True)
    revoke.add_argument("--region", default="", help="its region (edge and device only)")


def _ca_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca", type=Path, required=True, help="the fleet CA's directory (fogline certs init)")


def run(args: argparse.Namespace) -> int:
    """Run the ``fogline certs`` subcommand ``args`` names; 2 after one line on stderr if it fails."""
    commands = {"init": _init, "issue": _issue, "token": _token, "tokens": _tokens, "revoke": _revoke}
    try:
        return commands[args.certs_command](args)
    except (ValueError, OSError) as err:  # IdentityError, CertificateError, FileExistsError, FileNotFoundError
        print(f"fogline certs: {err}", file=sys.stderr)
        return 2


def _init(args: argparse.Namespace) -> int:
    from fogline.adapters.tls.certs import CA_CERT, CA_KEY, FleetCA

    ca = FleetCA.init(args.directory)
    print(f"wrote {ca.directory / CA_CERT} (the CA certificate: give it to every process)")
    print(f"wrote {ca.directory / CA_KEY} (the CA key: keep it secret, 0600)")
    print(f"created {ca.tokens_dir} (join tokens)")
    print(f"next: fogline certs issue --ca {ca.directory} --service cloud --id cloud-1 --out <dir>", file=sys.stderr)
    return 0


def _issue(args: argparse.Namespace) -> int:
    from fogline.adapters.tls.certs import not_after, write_identity

    identity = _identity(args.service, args.id, args.region)
    ca = _load(args.ca)
    cert_pem, key_pem = ca.issue(identity, ttl_s=args.ttl, hosts=args.host)
    assert key_pem is not None  # NOTE: issue() generated the key, so it returns it
    files = write_identity(args.out, cert_pem, key_pem, ca.cert_pem)
    print(identity.uri)
    print(f"expires {_iso(not_after(cert_pem))}")
    print(f"wrote {files.cert}, {files.key}, {files.ca}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from fogline.core.security.tokens import JoinTokens, token_id

    tokens = JoinTokens(_load(args.ca).tokens_dir)
    token = tokens.create(service=args.service, region=args.region, ttl_s=args.ttl, uses=args.uses)
    where = f" in region {args.region!r}" if args.service in REGIONAL else ""
    print(f"join token {token_id(token)}: enrols a {args.service}{where}, {args.uses} use(s), "
          f"expires {_iso(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=args.ttl))}", file=sys.stderr)
    print(token, flush=True)
    return 0


def _tokens(args: argparse.Namespace) -> int:
    from fogline.core.security.tokens import JoinTokens

    active = JoinTokens(_load(args.ca).tokens_dir).active()
    if not active:
        print("no active join tokens", file=sys.stderr)
    for t in active:
        expires = _iso(dt.datetime.fromtimestamp(t["expires_at"], dt.timezone.utc))
        print(f"{t['id']}  {t['service']:<6}  region={t['region'] or '-'}  uses_left={t['uses_left']}  "
              f"expires {expires}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    identity = _identity(args.service, args.id, args.region)
    _load(args.ca).ledger.revoke(identity.uri)
    print(f"revoked {identity.uri}: no renewal or enrolment from now on; evict it at its master "
          "(DELETE /v1/admin/members/<id>) to drop it at once", file=sys.stderr)
    return 0


def _identity(service: str, id_: str, region: str) -> Identity:
    """The identity the flags name; IdentityError saying which flag to fix."""
    if service in REGIONAL and not region:
        raise IdentityError(f"a {service} certificate names its region: give --region")
    return Identity(service=service, id=id_, region=region)


def _load(directory: Path) -> FleetCA:
    from fogline.adapters.tls.certs import FleetCA

    return FleetCA.load(directory)


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
