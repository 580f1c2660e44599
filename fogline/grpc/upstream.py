"""A V2 peer reached over gRPC: one channel per peer, ModelInfer forwarded as bytes."""

from __future__ import annotations

import grpc

from fogline._proto import inference_pb2 as pb
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.grpc.server import channel_options
from fogline.grpc.status import from_rpc_error

_INFER = "/inference.GRPCInferenceService/ModelInfer"


class GrpcUpstream:
    """Implements ``fogline.dispatch.Upstream[bytes, bytes]`` over one long-lived channel."""

    def __init__(self, address: str, *, max_message_bytes: int, name: str = "") -> None:
        self.address = address
        self.name = name or address
        self._channel = grpc.aio.insecure_channel(address, options=channel_options(max_message_bytes))
        self._infer = self._channel.unary_unary(_INFER)  # bytes in, bytes out: no re-encoding
        self.stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    async def infer(self, request: bytes, timeout_s: float | None) -> bytes:
        try:
            return await self._infer(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, peer=self.name) from None

    async def model_metadata(self, name: str, version: str, timeout_s: float) -> pb.ModelMetadataResponse:
        try:
            return await self.stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=version),
                                                 timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, peer=self.name) from None

    async def model_ready(self, name: str, version: str, timeout_s: float) -> bool:
        try:
            reply = await self.stub.ModelReady(pb.ModelReadyRequest(name=name, version=version),
                                               timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, peer=self.name) from None
        return reply.ready

    async def close(self) -> None:
        await self._channel.close()
