"""Assemble grpc.aio servers: message size limits, the standard health service, port binding."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fogline.adapters.ports import check_port
from fogline.errors import PortInUseError

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


FRAMING_ALLOWANCE_BYTES = 64 * 1024
"""Room above a message limit for what a tier adds to a response it relays (stream tags, parameters):
an answer to a request at the limit must not fail on its way back."""


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options of a channel to a peer: requests up to the limit, answers with the framing allowance."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes + FRAMING_ALLOWANCE_BYTES),
    ]


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options of a server: requests up to the limit, answers with the framing allowance."""
    return [
        ("grpc.max_send_message_length", max_message_bytes + FRAMING_ALLOWANCE_BYTES),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def create_server(*handlers: grpc.GenericRpcHandler,
                  registrars: Iterable[Callable[[grpc.aio.Server], None]] = (),
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  max_concurrent_rpcs: int | None = None) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A server with ``handlers``, generated-servicer ``registrars`` and grpc.health.v1
    (NOT_SERVING until marked serving)."""
    server = grpc.aio.server(
        options=[*server_options(max_message_bytes), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers(handlers)
    for register in registrars:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def bind(server: grpc.aio.Server, host: str, port: int, *, flag: str = "--grpc-port",
         credentials: grpc.ServerCredentials | None = None) -> int:
    """Listen on host:port (0 = any free port), with TLS when ``credentials`` are given; the port
    actually bound. A port that is taken raises :class:`PortInUseError` naming ``flag``, the option
    that picks it.

    NOTE: grpc listens with SO_REUSEADDR (a restart binds at once over TIME-WAIT sockets) and, with
    ``grpc.so_reuseport`` off, refuses a second live listener."""
    check_port(host, port, flag)
    try:
        address = f"{host}:{port}"
        bound = (server.add_insecure_port(address) if credentials is None
                 else server.add_secure_port(address, credentials))
    except RuntimeError:  # grpcio >= 1.5x raises instead of returning 0
        bound = 0
    if bound == 0:
        raise PortInUseError(host, port, flag)
    return bound


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    await health_servicer.set("", status)
    await health_servicer.set("inference.GRPCInferenceService", status)
