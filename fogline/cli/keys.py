"""``fogline keys``: create and list the API keys of a keys file (``fogline.core.security.apikeys``).

``create`` prints the new key, and only it, on stdout: the file keeps its SHA-256, so this is the only
time the key can be read. ``list`` shows names and models, never a key (nor a full hash).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fogline.core.security.apikeys import KeyEntry, create_key, read_keys

HASH_SHOWN = 8
"""Hex digits of a key's hash that ``list`` shows: enough to tell keys apart."""


def add_parser(sub: Any) -> None:
    """Add ``keys create`` and ``keys list`` to the subcommands ``sub`` (an argparse subparsers action)."""
    keys = sub.add_parser("keys", help="create and list API keys for inference")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key, add it to FILE and print it (the only time)")
    create.add_argument("file", type=Path, metavar="FILE", help="the keys file (created, mode 600, if missing)")
    create.add_argument("--name", required=True,
                        help="who the key is for (shown by `fogline keys list` and in error messages; only the "
                             "key's hash is stored)")
    create.add_argument("--model", action="append", dest="models", default=[], metavar="M",
                        help="a model the key may use (repeatable; default: every model)")
    listing = actions.add_parser("list", help="show the keys of FILE: names and models")
    listing.add_argument("file", type=Path, metavar="FILE", help="the keys file")


def run(args: argparse.Namespace) -> int:
    """Run ``fogline keys create|list``; the exit status (2 for a file or flag to fix)."""
    try:
        if args.keys_command == "create":
            print(create_key(args.file, name=args.name, models=args.models))
        else:
            for entry in read_keys(args.file):
                print(describe(entry))
    except ValueError as err:
        print(f"fogline keys {args.keys_command}: {err}", file=sys.stderr)
        return 2
    return 0


def describe(entry: KeyEntry) -> str:
    """One line of ``keys list``: name, the start of the hash, the models."""
    models = "every model" if entry.models is None else ", ".join(sorted(entry.models))
    return f"{entry.name}\tsha256:{entry.sha256[:HASH_SHOWN]}…\t{models}"
