"""Assemble grpc.aio servers: message size limits, the standard health service, port binding."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def create_server(*handlers: grpc.GenericRpcHandler,
                  registrars: Iterable[Callable[[grpc.aio.Server], None]] = (),
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  max_concurrent_rpcs: int | None = None) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A server with ``handlers``, generated-servicer ``registrars`` and grpc.health.v1
    (NOT_SERVING until marked serving)."""
    server = grpc.aio.server(
        options=[*channel_options(max_message_bytes), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers(handlers)
    for register in registrars:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def bind(server: grpc.aio.Server, host: str, port: int) -> int:
    """Listen on host:port (0 = any free port); the port actually bound."""
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} (in use, or no permission)")
    return bound


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    await health_servicer.set("", status)
    await health_servicer.set("inference.GRPCInferenceService", status)
