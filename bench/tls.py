"""``python -m bench.tls``: what mTLS costs. The same region twice, side by side — an edge master
and two device nodes serving ``mlp`` — once in plaintext and once with mTLS on every hop (client →
edge → devices, certificates from a fleet CA made for the run); closed-loop load through each
edge at concurrency 1 and 32, the two alternated within each repetition so that the machine's
noise falls on both alike. Medians over repetitions; the marked section ``tls`` of docs/perf.md
is rewritten.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import grpc

from bench.load import Request, Target, Window, run_load
from bench.report import PERF_DOC, machine_facts, report_command, table, write_section
from bench.results import Measurement
from bench.servers import Server, Servers
from bench.suite import progress
from fogline.adapters.grpc.codec import encode_request
from fogline.adapters.tls.certs import FleetCA, write_identity
from fogline.adapters.tls.material import TlsFiles
from fogline.core.security.identity import Identity
from fogline.local.launch import wait_ready
from fogline.local.samples import build_sample_repository

DEFAULT_OUT = PERF_DOC
MODEL = "mlp"
CONCURRENCIES = (1, 32)
REGION = "bench"


def issue(ca: FleetCA, root: Path, identity: Identity) -> list[str]:
    """The TLS flags of a process with a certificate for ``identity``."""
    cert, key = ca.issue(identity, ttl_s=86400, hosts=["127.0.0.1"])
    assert key is not None
    files = write_identity(root / identity.id, cert, key, ca.cert_pem)
    return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]


def start_region(servers: Servers, models: Path, prefix: str, tls: dict[str, list[str]]) -> tuple[Server, list[Server]]:
    """An edge master and two devices serving ``mlp``; ``tls`` maps each id to its TLS flags (none: plaintext)."""
    edge_id = f"{prefix}-edge"
    edge = servers.fogline(edge_id, "edge", "--region", REGION, "--id", edge_id, *tls.get(edge_id, []))
    wait_ready(edge)
    devices = []
    for i in range(2):
        name = f"{prefix}-d{i}"
        devices.append(servers.fogline(name, "device", "--region", REGION, "--id", name, "--models", str(models),
                                       "--model", MODEL, "--master", edge.endpoints["control"], *tls.get(name, [])))
    servers.wait_ready(*devices)
    return edge, devices


async def until_served(target: Target, request: Request, timeout_s: float = 60.0) -> None:
    """Wait until the edge answers (its devices registered and passed their health checks)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with target.channel() as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        while True:
            try:
                await call(request.payload, timeout=2.0)
                return
            except grpc.aio.AioRpcError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)


def client_credentials(ca: FleetCA, root: Path) -> grpc.ChannelCredentials:
    cert, key = ca.issue(Identity(service="client", id="bench"), ttl_s=86400)
    assert key is not None
    files: TlsFiles = write_identity(root / "client", cert, key, ca.cert_pem)
    return grpc.ssl_channel_credentials(files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes())


async def measure(targets: dict[str, Target], request: Request, reps: int,
                  window: Window) -> dict[tuple[str, int], list[Measurement]]:
    results: dict[tuple[str, int], list[Measurement]] = {}
    for target in targets.values():
        await until_served(target, request)
    for rep in range(1, reps + 1):
        for concurrency in CONCURRENCIES:
            for mode, target in targets.items():
                progress(f"rep {rep}/{reps}: {mode}, concurrency {concurrency}")
                m = await run_load(target, request, concurrency, window)
                if m.errors:
                    progress(f"  {m.errors} errors, first: {m.first_error}")
                results.setdefault((mode, concurrency), []).append(m)
    return results


def render(results: dict[tuple[str, int], list[Measurement]], command: str, date: str, reps: int) -> str:
    rows, ratios = [], {}
    for concurrency in CONCURRENCIES:
        medians = {}
        for mode in ("plaintext", "mTLS"):
            ms = results[(mode, concurrency)]
            medians[mode] = statistics.median(m.throughput for m in ms)
            rows.append([mode, str(concurrency), f"{medians[mode]:.0f}",
                         f"{statistics.median(m.percentile_ms(50) for m in ms):.2f}",
                         f"{statistics.median(m.percentile_ms(99) for m in ms):.2f}",
                         str(sum(m.errors for m in ms))])
        ratios[concurrency] = medians["mTLS"] / medians["plaintext"]
    lines = ["## mTLS against plaintext", "",
             f"`{command}`, {date}: an edge master and two device nodes serving `mlp`, client → edge → devices, "
             f"in plaintext and with mTLS on every hop; closed-loop load through the edge; medians of {reps} "
             "alternated repetitions.", "",
             table(["path", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"], rows, left=2), ""]
    for concurrency, ratio in ratios.items():
        lines.append(f"- concurrency {concurrency}: mTLS keeps {ratio:.0%} of plaintext throughput "
                     f"(cost {1 - ratio:.0%}).")
    lines += ["", "The TLS handshake happens once per long-lived channel (client → edge, edge → each device); "
              "what remains per request is record encryption on both hops (AES-GCM in BoringSSL)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.tls", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report to update (default {DEFAULT_OUT})")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=4.0, help="measured window per run")
    args = parser.parse_args(argv)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine_facts()
    with tempfile.TemporaryDirectory(prefix="fogline-tls-") as tmp, Servers(Path(tmp)) as servers:
        root = Path(tmp)
        models = build_sample_repository(root / "models")
        ca = FleetCA.init(root / "ca")
        tls = {f"tls-{n}": issue(ca, root / "certs", Identity(service=s, id=f"tls-{n}", region=REGION))
               for n, s in (("edge", "edge"), ("d0", "device"), ("d1", "device"))}
        plain_edge, plain_devices = start_region(servers, models, "plain", {})
        tls_edge, tls_devices = start_region(servers, models, "tls", tls)
        pids = lambda edge, devices: {"edge": edge.pid, **{f"device{i}": d.pid for i, d in enumerate(devices)}}  # noqa: E731
        targets = {"plaintext": Target("plaintext", plain_edge.grpc, pids(plain_edge, plain_devices)),
                   "mTLS": Target("mTLS", tls_edge.grpc, pids(tls_edge, tls_devices),
                                  credentials=client_credentials(ca, root / "certs"))}
        request = Request(MODEL, encode_request(MODEL, {"input": __import__("numpy").zeros((1, 64), "float32")})
                          .SerializeToString())
        results = asyncio.run(measure(targets, request, args.reps, Window(warmup_s=1.0, duration_s=args.duration_s)))
    section = render(results, report_command(argv, module="bench.tls"), date, args.reps)
    write_section(args.out, "tls", section)
    progress(f"updated the tls section of {args.out}")
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
