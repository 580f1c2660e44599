"""A bare grpc.aio server: the transport baseline the device node and edge master are compared with.

It answers every ``inference.GRPCInferenceService/ModelInfer`` call with the same pre-serialized
``ModelInferResponse`` (a real response of the model, captured by the benchmark), without parsing
the request: what is left is the cost of gRPC itself for the same message sizes.

    python -m bench.echo_server --response FILE --ready-file READY
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

import grpc

from fogline.adapters.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, channel_options
from fogline.servers.process import write_json_atomic

SERVICE = "inference.GRPCInferenceService"


def echo_handler(response: bytes) -> grpc.GenericRpcHandler:
    """A handler answering ModelInfer with ``response``; bytes in, bytes out (no (de)serializers)."""

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    return grpc.method_handlers_generic_handler(
        SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)})


async def serve(response: bytes, host: str, ready_file: Path) -> None:
    """Serve until SIGTERM/SIGINT; the bound endpoint goes to ``ready_file`` as JSON."""
    # The same server options as fogline.adapters.grpc.server.create_server, without the health service.
    server = grpc.aio.server(options=[*channel_options(DEFAULT_MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((echo_handler(response),))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_json_atomic(ready_file, {"grpc": f"{host}:{port}", "pid": os.getpid()})
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--response", type=Path, required=True, help="file with the serialized response")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ready-file", type=Path, required=True, help="write the bound endpoint here")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.response.read_bytes(), args.host, args.ready_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
