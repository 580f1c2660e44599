"""A V2 peer reached over gRPC: one channel per peer, ModelInfer forwarded as bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from fogline._proto import inference_pb2 as pb
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.errors import UnavailableError
from fogline.grpc.server import channel_options
from fogline.grpc.status import from_rpc_error

_INFER = "/inference.GRPCInferenceService/ModelInfer"

T = TypeVar("T")


class GrpcUpstream:
    """Implements ``fogline.dispatch.Upstream[bytes, bytes]`` over one long-lived channel."""

    def __init__(self, address: str, *, max_message_bytes: int, name: str = "") -> None:
        self.address = address
        self.name = name or address
        self._channel = grpc.aio.insecure_channel(address, options=channel_options(max_message_bytes))
        self._infer = self._channel.unary_unary(_INFER)  # bytes in, bytes out: no re-encoding
        self.stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._closed = False

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, peer=self.name) from None
        except asyncio.CancelledError:
            # Closing the channel cancels the calls on it: the peer left the pool mid-request. That is
            # UNAVAILABLE (retry elsewhere), not a cancellation of our caller, which must propagate.
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", None)
            if self._closed and not (cancelling and cancelling()):
                raise UnavailableError(f"{self.name}: connection closed while the request was in flight") from None
            raise

    async def infer(self, request: bytes, timeout_s: float | None) -> bytes:
        return await self._call(self._infer(request, timeout=timeout_s))

    async def model_metadata(self, name: str, version: str, timeout_s: float) -> pb.ModelMetadataResponse:
        return await self._call(self.stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=version),
                                                        timeout=timeout_s))

    async def model_ready(self, name: str, version: str, timeout_s: float) -> bool:
        reply = await self._call(self.stub.ModelReady(pb.ModelReadyRequest(name=name, version=version),
                                                      timeout=timeout_s))
        return reply.ready

    async def close(self, grace_s: float | None = None) -> None:
        """Close the channel; calls in flight may finish for ``grace_s`` first, the rest are cancelled."""
        self._closed = True
        await self._channel.close(grace_s)
