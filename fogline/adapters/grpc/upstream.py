"""A V2 peer reached over gRPC: one channel per peer, ModelInfer forwarded as bytes.

With tracing on (``fogline.adapters.tracing``), each request carries the current trace context: in
the call's metadata, or, on a stream, in parameters appended to the request's bytes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from fogline._proto import inference_pb2 as pb
from fogline._proto import inference_pb2_grpc as pb_grpc
from fogline.adapters import tracing
from fogline.adapters.grpc import wire
from fogline.adapters.grpc.server import channel_options
from fogline.adapters.grpc.status import from_rpc_error
from fogline.adapters.tls.credentials import open_channel
from fogline.adapters.tls.material import TlsMaterial
from fogline.core.observe.spans import PROCESS_SPANS
from fogline.core.parameters import PARAM_CODE
from fogline.core.security.identity import Identity
from fogline.errors import DeadlineExceededError, ErrorCode, FoglineError, UnavailableError, error_for_code

_INFER = "/inference.GRPCInferenceService/ModelInfer"
_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"

T = TypeVar("T")


class GrpcUpstream:
    """Implements ``fogline.core.routing.dispatch.Upstream[bytes, bytes]`` over one long-lived channel:
    plaintext, or with ``material`` mTLS checking that the server is ``peer``."""

    def __init__(self, address: str, *, max_message_bytes: int, name: str = "", material: TlsMaterial | None = None,
                 peer: Identity | None = None) -> None:
        self.address = address
        self.name = name or address
        self.max_message_bytes = max_message_bytes  # what the peer accepts: one limit on every tier
        self._channel = open_channel(address, material, peer=peer, options=channel_options(max_message_bytes))
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
        metadata = tracing.outgoing_metadata() if PROCESS_SPANS.enabled else None
        return await self._call(self._infer(request, timeout=timeout_s, metadata=metadata))

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


class StreamUpstream(GrpcUpstream):
    """Multiplexes ModelInfer requests over one long-lived ModelStreamInfer stream.

    A gRPC stream message costs about half the CPU of a unary call in Python, on both ends, so an
    edge master talks to each device node this way. Each request is re-tagged with a stream-local
    id (appended to its bytes: the last id wins) and the remaining time of its caller; replies are
    matched back by id. When the stream breaks, every request waiting on it fails with
    UNAVAILABLE (the dispatcher retries it elsewhere) and the next request opens a new stream. A
    request within the message limit that the re-tagging would take over it goes as a ModelInfer call
    of its own instead, untouched: what a client may send never breaks the stream.
    """

    def __init__(self, address: str, *, max_message_bytes: int, name: str = "", material: TlsMaterial | None = None,
                 peer: Identity | None = None) -> None:
        super().__init__(address, max_message_bytes=max_message_bytes, name=name, material=material, peer=peer)
        self._open_stream = self._channel.stream_stream(_STREAM)
        self._stream_call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()

    def _stream(self) -> tuple[grpc.aio.StreamStreamCall, dict[str, asyncio.Future[bytes]]]:
        if self._stream_call is None or self._stream_call.done():
            self._stream_call = self._open_stream()
            self._pending = {}
            self._reader = asyncio.create_task(self._read(self._stream_call, self._pending))
        return self._stream_call, self._pending

    async def infer(self, request: bytes, timeout_s: float | None) -> bytes:
        tag = str(next(self._ids))
        timeout_ms = None if timeout_s is None else max(1, int(timeout_s * 1000))
        message = wire.tag_stream_request(request, tag, timeout_ms)
        if PROCESS_SPANS.enabled:
            message += tracing.outgoing_parameters()
        if len(message) > self.max_message_bytes:
            # NOTE: our tags would take the request over the peer's message limit, and one oversized message
            # ends the whole stream, every request on it with it: this one goes on a call of its own, as received.
            return await super().infer(request, timeout_s)
        call, pending = self._stream()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        pending[tag] = future
        timer = loop.call_later(timeout_s, self._expire, future, timeout_s) if timeout_s is not None else None
        try:
            async with self._write_lock:
                await call.write(message)
            return await future
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(f"{self.name}: stream broken: {exc.details() or exc.code().name}") from None
        except asyncio.InvalidStateError:
            raise UnavailableError(f"{self.name}: stream broken") from None
        finally:
            pending.pop(tag, None)
            if timer is not None:
                timer.cancel()

    def _expire(self, future: asyncio.Future[bytes], timeout_s: float) -> None:
        if not future.done():
            future.set_exception(DeadlineExceededError(f"{self.name}: no answer within {timeout_s:.3f}s"))

    async def _read(self, call: grpc.aio.StreamStreamCall, pending: dict[str, asyncio.Future[bytes]]) -> None:
        failure: FoglineError = UnavailableError(f"{self.name}: stream closed by the peer")
        try:
            async for reply in call:
                self._deliver(reply, pending)
        except grpc.aio.AioRpcError as exc:
            failure = UnavailableError(f"{self.name}: {exc.details() or exc.code().name}")
        finally:
            for future in pending.values():
                if not future.done():
                    future.set_exception(failure)

    @staticmethod
    def _deliver(reply: bytes, pending: dict[str, asyncio.Future[bytes]]) -> None:
        error, body = wire.read_stream_response(reply)
        future = pending.get(wire.message_id(body))
        if future is None or future.done():
            return  # expired or abandoned: nobody waits for it
        if error:
            code = pb.ModelInferResponse.FromString(body).parameters[PARAM_CODE].string_param
            future.set_exception(error_for_code(ErrorCode(code) if code in ErrorCode.__members__ else
                                                ErrorCode.INTERNAL, error))
        else:
            future.set_result(bytes(body))

    async def close(self, grace_s: float | None = None) -> None:
        """Let requests in flight finish (up to ``grace_s``), then end the stream and the channel."""
        if grace_s and self._pending:
            await asyncio.wait(list(self._pending.values()), timeout=grace_s)
        if self._stream_call is not None:
            self._stream_call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await super().close()
