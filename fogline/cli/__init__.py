"""The ``fogline`` command: run a tier, the whole local stack, or one inference request."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fogline.adapters.consul.discovery import ConsulDiscovery
    from fogline.servers.model_server import ModelServerSettings

from fogline.cli import certs as certs_cli
from fogline.cli import infer as infer_cli
from fogline.cli import keys as keys_cli
from fogline.cli import models as models_cli
from fogline.cli import rollout as rollout_cli
from fogline.cli import security_flags
from fogline.core.escalation.catalog import CatalogError
from fogline.core.serving.repository import ConfigError

S = TypeVar("S", bound="ModelServerSettings")

DEFAULT_HOME = Path(os.environ.get("FOGLINE_HOME", Path.home() / ".fogline"))
MiB = 1024 * 1024


def _common(p: argparse.ArgumentParser, *, region: bool = True) -> None:
    if region:
        p.add_argument("--region", default="default", help="region this process serves (default: default)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--advertise-host", help="address peers use to reach this process (default: --host)")
    p.add_argument("--grpc-port", type=int, default=0, help="V2 inference port (0 = any free port)")
    p.add_argument("--http-port", type=int, default=0, help="REST status port (0 = any free port)")
    p.add_argument("--max-message-mb", type=int, default=64, help="largest request accepted, MiB (default 64)")
    p.add_argument("--drain-grace-s", type=float, default=10.0, help="time to finish in-flight work on SIGTERM")
    p.add_argument("--ready-file", type=Path, help="write the bound endpoints here as JSON once serving")
    p.add_argument("--parent-pid", type=int,
                   help="drain and exit when this process is gone (set by `fogline up` for its children)")
    d = p.add_argument_group("discovery")
    d.add_argument("--discovery", choices=("embedded", "consul"),
                   default=os.environ.get("FOGLINE_DISCOVERY", "embedded"),
                   help="how peers are found: the parent master's embedded registry (default; --master/--cloud) "
                        "or Consul (the ACL token only from CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE)")
    d.add_argument("--consul-addr", help="Consul agent HTTP address (default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500)")
    d.add_argument("--consul-check-interval-s", type=float, default=2.0,
                   help="how often Consul checks this process's grpc.health.v1 (default 2)")
    d.add_argument("--consul-deregister-after-s", type=float, default=60.0,
                   help="Consul drops this process after its check is critical this long (default 60)")
    d.add_argument("--consul-kv-prefix", default="fogline", help="KV prefix of the live catalog and policy")
    security_flags.add_process_flags(p)


def _model_server(p: argparse.ArgumentParser, service: str, id_help: str, master: str) -> None:
    """The flags of a process that runs models itself (device node, GPU worker)."""
    _common(p)
    p.add_argument("--models", type=Path, required=True, help="model repository directory")
    p.add_argument("--model", action="append", dest="only", help="load only this model (repeatable)")
    p.add_argument("--id", help=f"{id_help} (default: {service}-<hostname>)")
    p.add_argument("--master", help=f"{master} control address host:port (omit to run stand-alone)")
    p.add_argument("--fault-delay-ms", type=float, default=0.0,
                   help="testing aid (chaos suites): delay every inference this long, as a slow node would")
    p.add_argument("--fetch-rate-mbps", type=float,
                   help="most this node fetches model artefacts from its master at, megabits/s (default: no limit)")
    p.add_argument("--admin-token-file", type=Path,
                   help="file with the admin bearer token for Triton's repository calls (index, load, unload); "
                        "an admin client certificate works too")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fogline", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("FOGLINE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    device = sub.add_parser("device", help="run a device node (ONNX Runtime)")
    _model_server(device, "device", "node id, unique in the region", "edge master")
    device.add_argument("--providers", help="comma-separated ONNX Runtime providers, best first")

    worker = sub.add_parser("worker", help="run a cloud GPU worker (PyTorch, CUDA if present)")
    _model_server(worker, "worker", "worker id, unique among the cloud master's workers", "cloud master")
    worker.add_argument("--device", choices=("cpu", "cuda"),
                        help="where models run (default: cuda if torch sees a GPU, else cpu)")

    edge = sub.add_parser("edge", help="run an edge master for a region")
    _common(edge)
    edge.add_argument("--id", help="edge id (default: edge-<hostname>)")
    edge.add_argument("--control-port", type=int, default=0, help="control-plane port for device nodes")
    edge.add_argument("--member-ttl-s", type=float, default=3.0, help="drop a device silent this long")
    edge.add_argument("--upstream", choices=("stream", "unary"), default="stream",
                      help="forward to devices over one multiplexed stream each (default) or a call per request")
    edge.add_argument("--cloud", help="cloud master control address host:port (omit to run without one)")
    security_flags.add_master_flags(edge)
    _dashboard_flag(edge)
    edge.add_argument("--cache-dir", type=Path,
                      help="artefact cache for the region's devices (default: a temporary directory)")
    edge.add_argument("--cache-mb", type=int, default=2048, help="artefact cache size limit, MiB (default 2048)")
    edge.add_argument("--fetch-rate-mbps", type=float,
                      help="most this edge fetches artefacts from the cloud at, megabits/s (default: no limit)")
    edge.add_argument("--device-queue-limit", type=int, default=128,
                      help="requests outstanding at a device node beyond which it counts as full; when all "
                           "holding a model are, requests overflow to the cloud (default 128)")
    edge.add_argument("--attempt-timeout-s", type=float, default=1.0,
                      help="abandon one attempt at a device or worker after this long and retry elsewhere, "
                           "when the caller's deadline leaves time (default 1.0)")
    edge.add_argument("--slow-call-s", type=float, default=1.0,
                      help="a device or worker call this long counts as slow; a circuit opens when half "
                           "the recent calls are (default 1.0)")
    edge.add_argument("--escalation-timeout-s", type=float, default=2.0,
                      help="the longest a cascade waits for the cloud before answering from the device, "
                           "flagged degraded (default 2.0)")

    cloud = sub.add_parser("cloud", help="run the cloud master (edge masters and GPU workers register here)")
    _common(cloud, region=False)
    cloud.add_argument("--id", help="cloud master id (default: cloud-<hostname>)")
    cloud.add_argument("--control-port", type=int, default=0,
                       help="control-plane port for edge masters and GPU workers")
    cloud.add_argument("--member-ttl-s", type=float, default=3.0,
                       help="drop an edge master or worker silent this long")
    cloud.add_argument("--catalog", type=Path,
                       help="model catalog TOML: placement and cascade rules (default: run models where held)")
    cloud.add_argument("--topology-refresh-s", type=float, default=2.0,
                       help="resend the topology to edge masters at least this often (default 2.0)")
    cloud.add_argument("--model-store", type=Path,
                       help="the model registry's directory: pushes over the admin API (`fogline models push`), "
                            "reads on /v1/models (default: no registry)")
    cloud.add_argument("--max-model-mb", type=int, default=512, help="largest model push accepted, MiB (default 512)")
    security_flags.add_master_flags(cloud)
    _dashboard_flag(cloud)

    up = sub.add_parser("up", help="start a whole local stack with sample models")
    up.add_argument("--workdir", type=Path, default=DEFAULT_HOME,
                    help=f"models, logs, state (default {DEFAULT_HOME})")
    up.add_argument("--edge-port", type=int, default=8001, help="edge master V2 gRPC port (0 = any)")
    up.add_argument("--edge-http-port", type=int, default=8000, help="edge master REST port (0 = any)")
    up.add_argument("--cloud-port", type=int, default=8011, help="cloud master V2 gRPC port (0 = any)")
    up.add_argument("--cloud-http-port", type=int, default=8010, help="cloud master REST port (0 = any)")
    up.add_argument("--regions", type=int, default=2, help="regions, each an edge master (default 2)")
    up.add_argument("--devices", type=int, default=2, help="device nodes per region (default 2)")
    up.add_argument("--insecure", action="store_true",
                    help="run every process in plaintext, without certificates (default: a CA of its own under "
                         "<workdir>/tls and mTLS on every hop)")
    up.add_argument("--scrape-interval-s", type=float, default=5.0,
                    help="Prometheus scrape interval written to <workdir>/prometheus.yml, seconds (default 5)")

    infer_cli.add_parser(sub, DEFAULT_HOME)

    calibrate = sub.add_parser("calibrate", help="choose a cascade's hardness threshold on labelled validation data")
    calibrate.add_argument("--url", help="edge master host:port (default: the edge of the running `fogline up`)")
    calibrate.add_argument("--state", type=Path, default=DEFAULT_HOME / "stack.json", help="state file of `fogline up`")
    calibrate.add_argument("--model", required=True, help="the cascade's catalog name, e.g. digits")
    calibrate.add_argument("--data", type=Path, required=True,
                           help="validation data .npz with inputs and integer labels (keys x_val/y_val or x/y)")
    calibrate.add_argument("--output", help="the output holding class probabilities (default: the only one)")
    calibrate.add_argument("--criterion", choices=("max_prob", "entropy", "margin"), default="max_prob")
    goal = calibrate.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-rate", type=float, help="escalate at most this share of requests, e.g. 0.3")
    goal.add_argument("--max-drop", type=float,
                      help="escalate as little as keeps accuracy within this of the cloud model's, e.g. 0.005")
    calibrate.add_argument("--batch", type=int, default=64, help="rows per request (default 64)")
    security_flags.add_client_flags(calibrate)

    samples = sub.add_parser("samples", help="build the sample model repository")
    samples.add_argument("directory", type=Path)
    certs_cli.add_parser(sub)
    keys_cli.add_parser(sub)
    models_cli.add_parser(sub, DEFAULT_HOME)
    rollout_cli.add_parser(sub, DEFAULT_HOME)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clients = ("infer", "calibrate", "samples", "certs", "keys", "models", "rollout")
    if args.command in clients and hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `fogline infer | head` ends quietly
    commands = {"device": _device, "worker": _worker, "edge": _edge, "cloud": _cloud, "up": _up,
                "infer": infer_cli.run, "samples": _samples, "calibrate": _calibrate, "certs": certs_cli.run,
                "keys": keys_cli.run, "models": models_cli.run, "rollout": rollout_cli.run}
    try:
        return commands[args.command](args)
    except ValueError as err:  # ConfigError, CatalogError: a file or flag to fix, not a crash
        if not isinstance(err, (ConfigError, CatalogError, security_flags.UsageError)):
            raise
        print(f"fogline {args.command}: {err}", file=sys.stderr)
        return 2


def _consul(args: argparse.Namespace) -> ConsulDiscovery | None:
    """The Consul discovery the flags and Consul's environment variables ask for; None: embedded."""
    if args.discovery != "consul":
        return None
    from fogline.adapters.consul.client import ConsulSettings
    from fogline.adapters.consul.discovery import ConsulDiscovery

    overrides = {"address": args.consul_addr} if args.consul_addr else {}
    return ConsulDiscovery(consul=ConsulSettings.from_env(**overrides), check_interval_s=args.consul_check_interval_s,
                           deregister_critical_after_s=args.consul_deregister_after_s,
                           kv_prefix=args.consul_kv_prefix.strip("/"))


def _model_server_settings(cls: type[S], args: argparse.Namespace, **extra: Any) -> S:
    """Settings of a device node or GPU worker from the flags of :func:`_model_server`."""
    settings = cls(
        model_repository=args.models, models=tuple(args.only) if args.only else None, region=args.region,
        host=args.host, advertise_host=args.advertise_host, grpc_port=args.grpc_port, http_port=args.http_port,
        master=args.master, max_message_bytes=args.max_message_mb * MiB, drain_grace_s=args.drain_grace_s,
        fault_delay_s=args.fault_delay_ms / 1000, consul=_consul(args), admin_token_file=args.admin_token_file,
        fetch_rate_mbps=args.fetch_rate_mbps, **security_flags.process_settings(args), **extra,
    )
    if args.id:
        settings.node_id = args.id
    return settings


def _device(args: argparse.Namespace) -> int:
    from device_node import DeviceNode, DeviceSettings
    providers = args.providers.split(",") if args.providers else None
    settings = _model_server_settings(DeviceSettings, args, providers=providers)
    return _run_checked(DeviceNode(settings), settings, args)


def _worker(args: argparse.Namespace) -> int:
    from cloud_master.worker import GpuWorker, WorkerSettings
    settings = _model_server_settings(WorkerSettings, args, device=args.device)
    return _run_checked(GpuWorker(settings), settings, args)


def _dashboard_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dashboard-sample-s", type=float, default=1.0,
                        help="the dashboard (/ui/) samples this master's part of the fleet this often; 0 turns "
                             "sampling off (default 1.0)")


def _dashboard(args: argparse.Namespace) -> Any:
    from fogline.servers.dashboard import DashboardSettings

    return DashboardSettings(sample_s=args.dashboard_sample_s)


def _edge(args: argparse.Namespace) -> int:
    from edge_master import EdgeMaster, EdgeSettings
    from fogline.core.escalation.router import EdgeRoutingSettings
    from fogline.core.routing.breaker import BreakerSettings
    from fogline.core.routing.dispatch import DispatchSettings
    settings = EdgeSettings(
        region=args.region, host=args.host, advertise_host=args.advertise_host, grpc_port=args.grpc_port,
        control_port=args.control_port, http_port=args.http_port, max_message_bytes=args.max_message_mb * MiB,
        member_ttl_s=args.member_ttl_s, drain_grace_s=args.drain_grace_s,
        upstream_streams=args.upstream == "stream", cloud=args.cloud, cache_dir=args.cache_dir,
        cache_mb=args.cache_mb, fetch_rate_mbps=args.fetch_rate_mbps,
        routing=EdgeRoutingSettings(device_queue_limit=args.device_queue_limit,
                                    escalation_timeout_s=args.escalation_timeout_s),
        dispatch=DispatchSettings(attempt_timeout_s=args.attempt_timeout_s),
        breaker=BreakerSettings(slow_call_s=args.slow_call_s, probe_timeout_s=max(args.slow_call_s, 0.05)),
        consul=_consul(args), dashboard=_dashboard(args), **security_flags.process_settings(args),
        **security_flags.master_settings(args),
    )
    if args.id:
        settings.edge_id = args.id
    return _run_checked(EdgeMaster(settings), settings, args)


def _cloud(args: argparse.Namespace) -> int:
    from cloud_master import CloudMaster, CloudSettings

    settings = CloudSettings(
        host=args.host, advertise_host=args.advertise_host, grpc_port=args.grpc_port,
        control_port=args.control_port, http_port=args.http_port, max_message_bytes=args.max_message_mb * MiB,
        member_ttl_s=args.member_ttl_s, drain_grace_s=args.drain_grace_s, catalog=args.catalog,
        topology_refresh_s=args.topology_refresh_s, consul=_consul(args), **security_flags.process_settings(args),
        **security_flags.master_settings(args),
        model_store=args.model_store, max_model_bytes=args.max_model_mb * MiB, dashboard=_dashboard(args),
    )
    if args.id:
        settings.cloud_id = args.id
    return _run_checked(CloudMaster(settings), settings, args)


def _run_checked(service: Any, settings: Any, args: argparse.Namespace) -> int:
    """Serve ``service`` unless its settings would listen in plaintext where they must not."""
    from fogline.servers.process import run

    problem = settings.plaintext_problem(allowed=os.environ.get("FOGLINE_ALLOW_INSECURE") == "1")
    if problem:
        print(f"fogline {args.command}: {problem}", file=sys.stderr)
        return 2
    return run(service, args.ready_file, args.parent_pid)


def _up(args: argparse.Namespace) -> int:
    from fogline.local.stack import LocalStack

    return LocalStack(args.workdir, edge_port=args.edge_port, edge_http_port=args.edge_http_port,
                      cloud_port=args.cloud_port, cloud_http_port=args.cloud_http_port, regions=args.regions,
                      devices=args.devices, secure=not args.insecure,
                      scrape_interval_s=args.scrape_interval_s).run()


def _samples(args: argparse.Namespace) -> int:
    from fogline.local.samples import build_sample_repository

    print(build_sample_repository(args.directory, force=True))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import asyncio

    from fogline.errors import FoglineError
    from fogline.sdk.calibrate import calibrate

    url = infer_cli.stack_edge(args.url, args.state)
    if url is None:
        return 2
    try:
        report = asyncio.run(calibrate(url, args.model, args.data, criterion=args.criterion, output=args.output,
                                       target_rate=args.target_rate, max_drop=args.max_drop, batch=args.batch,
                                       **security_flags.client_settings(args)))
    except FoglineError as err:
        print(f"error: {err.code.value}: {err}", file=sys.stderr)
        return 1
    print(report)
    return 0
