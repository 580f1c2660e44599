"""``python -m bench``: run the performance benchmark on this machine and write docs/perf.md.

Starts an edge master, device nodes and echo servers as subprocesses, loads them from this
process, measures raw ONNX Runtime in-process, and writes the report (progress on stderr, the
report on stdout). Every subprocess is killed at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

from bench.report import PERF_DOC, keep_sections, machine_facts, render, report_command
from bench.servers import Servers
from bench.suite import Settings, progress, run_suite

DEFAULT_OUT = PERF_DOC


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one repetition of short windows: a smoke test (under a minute), not numbers to quote")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report to write (default {DEFAULT_OUT})")
    return parser


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; unwinds through the ``with`` blocks that stop the servers."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: FrameType | None) -> None:
    # Raised at once, also inside blocking code (asyncio's own SIGINT handler would wait for the next await).
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    settings = Settings.quick() if args.quick else Settings.full()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    facts = machine_facts()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        with tempfile.TemporaryDirectory(prefix="fogline-bench-") as tmp, Servers(Path(tmp)) as servers:
            results = asyncio.run(run_suite(settings, servers, Path(tmp)))
    except Stopped as stop:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # no "Task exception was never retrieved"
        progress(f"stopped by {signal.Signals(stop.signum).name}; servers killed, no report written")
        return 128 + stop.signum
    document = render(results, settings, report_command(argv), date, facts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = keep_sections(args.out.read_text() if args.out.is_file() else "", document)
    args.out.write_text(document)
    progress(f"wrote {args.out}")
    print(document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
