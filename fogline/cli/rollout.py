"""``fogline rollout``: staged rollouts of registry versions across the fleet.

    fogline rollout start NAME --version N [--steps 10,50,100] [--bake-s 30] [--regions a,b]
                          [--max-error-rate-increase X] [--max-p99-ratio X] [--max-disagreement X]
                          [--max-escalation-increase X] [--min-requests N] [--shadow-share X]
    fogline rollout status [NAME] [--json] [--watch]
    fogline rollout pause NAME | resume NAME | rollback NAME

It talks to the cloud master's admin API like ``fogline models`` (``--admin``, ``--admin-token-file``,
``--tls-ca``; by default the running ``fogline up``'s). Exit status: 0 done, 1 refused or
unreachable, 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fogline.cli.models import DEFAULT_STATE, AdminTarget, ModelsUsageError, RefusedError, _call, _target_flags, target

GATE_FLAGS = {"max_error_rate_increase": float, "max_p99_ratio": float, "max_disagreement": float,
              "max_escalation_increase": float, "min_requests": int, "shadow_share": float}
FINISHED = ("done", "rolled_back")


def add_parser(sub: argparse._SubParsersAction, default_home: Path | None = None) -> None:
    state = (default_home / "stack.json") if default_home else DEFAULT_STATE
    rollout = sub.add_parser("rollout", help="staged rollouts with health gates and automatic rollback")
    commands = rollout.add_subparsers(dest="rollout_command", required=True)
    start = commands.add_parser("start", help="roll a pushed version out in steps of traffic share")
    start.add_argument("name")
    start.add_argument("--version", type=int, required=True, help="the pushed version to roll out")
    start.add_argument("--steps", default="10,50,100", help="percents of traffic per step (default 10,50,100)")
    start.add_argument("--bake-s", type=float, default=30.0, help="how long each step's gates must hold (default 30)")
    start.add_argument("--regions", default="", help="comma-separated regions (default: every region)")
    for flag, kind in GATE_FLAGS.items():
        start.add_argument("--" + flag.replace("_", "-"), type=kind, help="gate threshold (default: the server's)")
    status = commands.add_parser("status", help="a rollout's step, gates and history (all rollouts without NAME)")
    status.add_argument("name", nargs="?")
    status.add_argument("--json", action="store_true", help="print the status JSON")
    status.add_argument("--watch", action="store_true", help="print it again every second until it finishes")
    parsers = [start, status]
    for action in ("pause", "resume", "rollback"):
        p = commands.add_parser(action, help=f"{action} the model's rollout")
        p.add_argument("name")
        parsers.append(p)
    for p in parsers:
        _target_flags(p, state)


def run(args: argparse.Namespace) -> int:
    try:
        to = target(args)
        if args.rollout_command == "start":
            return asyncio.run(_start(args, to))
        if args.rollout_command == "status":
            return asyncio.run(_status(args, to))
        path = f"/v1/admin/rollouts/{quote(args.name, safe='')}/{args.rollout_command}"
        answer = asyncio.run(_call(to, "POST", path))
        print(describe(answer))
        return 0
    except ModelsUsageError as err:
        print(f"fogline rollout: {err}", file=sys.stderr)
        return 2
    except RefusedError as err:
        print(f"fogline rollout {args.rollout_command}: {err}", file=sys.stderr)
        return 1


async def _start(args: argparse.Namespace, to: AdminTarget) -> int:
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        raise ModelsUsageError(f"--steps {args.steps!r}: comma-separated percents, e.g. 10,50,100") from None
    gates = {k: getattr(args, k) for k in GATE_FLAGS if getattr(args, k) is not None}
    body = {"version": args.version, "steps": steps, "bake_s": args.bake_s,
            "regions": [r.strip() for r in args.regions.split(",") if r.strip()], "gates": gates}
    answer = await _call(to, "POST", f"/v1/admin/rollouts/{quote(args.name, safe='')}", json=body)
    print(describe(answer))
    return 0


async def _status(args: argparse.Namespace, to: AdminTarget) -> int:
    path = "/v1/admin/rollouts" + (f"/{quote(args.name, safe='')}" if args.name else "")
    while True:
        answer = await _call(to, "GET", path)
        rollouts = answer if isinstance(answer, list) else [answer]
        if args.json:
            print(json.dumps(answer, indent=2))
        elif not rollouts:
            print("no rollouts", file=sys.stderr)
        else:
            print("\n".join(describe(r, history=bool(args.name)) for r in rollouts), flush=True)
        if not args.watch or all(r.get("state") in FINISHED for r in rollouts):
            return 0
        time.sleep(1.0)


def describe(r: dict[str, Any], *, history: bool = True) -> str:
    """A rollout's status in a few lines."""
    steps = ",".join(str(s) for s in r.get("steps", []))
    lines = [f"{r['model']} v{r['version']} (stable v{(r.get('stable') or {}).get('version', '-')}): {r['state']} "
             f"at step {r['step'] + 1} of {len(r.get('steps', []))} ({r.get('percent', 0)}%; steps {steps}), "
             f"bake {r.get('bake_s', 0):g}s, id {r['id']}"]
    if r.get("failure"):
        lines.append(f"  failure: {r['failure']}")
    if r.get("waiting"):
        lines.append(f"  waiting: {r['waiting']}")
    for region, live in sorted((r.get("regions") or {}).items()):
        gates = "; ".join(f"{g['name']} {'ok' if g['ok'] else 'FAILED' if g['ok'] is False else '?'}"
                          f" ({g['detail']})" for g in live.get("gates", []))
        lines.append(f"  region {region}: {'applied' if live.get('applied') else 'applying'}; {gates}")
    if history:
        for event in r.get("history", []):
            lines.append(f"  {event['at']}  {event['event']:<12} step {event['step'] + 1} "
                         f"({event.get('percent', '')}%) {event.get('detail', '')}")
    return "\n".join(lines)
