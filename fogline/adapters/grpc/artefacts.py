"""Model artefacts over the control plane's ``FetchArtefact``: chunked, resumable, verified, paced.

Edge masters fetch artefacts from the cloud master by digest, devices from their edge master. A
link to a device can be slow and break, and an artefact can be large, so:

- the server streams a blob from an offset in chunks, reading the file in a worker thread
  (:func:`serve_artefact`, over a :class:`BlobSource`: the registry or the cache);
- the client appends what arrives to a partial file and, when the stream breaks, asks again from
  where the file ends, with backoff (:class:`ArtefactFetcher`); it can hold the average rate under
  a limit, so that a transfer leaves room on the link for inference traffic;
- nothing is used before its sha256 matches: :func:`download` commits into the cache and fetches
  again from zero when the bytes arrived corrupted; a device places the file with
  :func:`verify_and_place`.

On a master the servicer's method delegates::

    async def FetchArtefact(self, request, context):
        async for chunk in serve_artefact(cache_source(self.cache), request, context, on_sent=count):
            yield chunk

and on the fetching side::

    fetcher = ArtefactFetcher(stub_stream(stub, peer="cloud master ..."), rate_mbps=20)
    blob = await download(fetcher, ref.digest, ref.size, cache.partial(ref.digest, ref.size), cache.commit)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Protocol

import grpc

from fogline._proto import control_pb2 as cpb
from fogline._proto import control_pb2_grpc as cpb_grpc
from fogline.adapters.grpc.status import from_rpc_error
from fogline.adapters.grpc.v2 import abort
from fogline.core.control.backoff import Backoff
from fogline.core.lifecycle.cache import ArtefactCache, DigestMismatchError, check_digest, short_digest, verify
from fogline.core.lifecycle.registry import ModelRegistry
from fogline.errors import (
    RETRYABLE_CODES,
    FoglineError,
    InvalidInputError,
    ModelNotFoundError,
    PayloadTooLargeError,
    UnavailableError,
    error_for_code,
)

CHUNK_BYTES = 256 * 1024
BURST_S = 0.1
"""How far ahead of its rate a paced transfer may run (a token bucket of this many seconds)."""
MAX_BACKOFF_S = 5.0


# --- serving -----------------------------------------------------------------------------------------


class BlobSource(Protocol):
    """Where a master's artefacts are: the cloud master's registry, an edge master's cache."""

    def open(self, digest: str) -> tuple[IO[bytes], int]:
        """The blob ``digest`` open for reading, and its size; ModelNotFoundError if unknown. Blocks."""
        ...


def _not_in_store(digest: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"artefact {short_digest(digest)} is not in this master's store")


def _opened(path: Path, digest: str) -> tuple[IO[bytes], int]:
    try:
        f = open(path, "rb")  # noqa: SIM115 (the caller closes it)
    except FileNotFoundError:  # NOTE: evicted between finding and opening it
        raise _not_in_store(digest) from None
    return f, os.fstat(f.fileno()).st_size


class _RegistrySource:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def open(self, digest: str) -> tuple[IO[bytes], int]:
        try:
            path = self.registry.blob_path(digest)
        except ModelNotFoundError:
            raise _not_in_store(digest) from None
        return _opened(path, digest)


class _CacheSource:
    def __init__(self, cache: ArtefactCache) -> None:
        self.cache = cache

    def open(self, digest: str) -> tuple[IO[bytes], int]:
        path = self.cache.path(digest)
        if path is None:
            raise _not_in_store(digest)
        return _opened(path, digest)


def registry_source(registry: ModelRegistry) -> BlobSource:
    """The cloud master's artefacts: the blobs of its model registry."""
    return _RegistrySource(registry)


def cache_source(cache: ArtefactCache) -> BlobSource:
    """An edge master's artefacts: the complete blobs of its cache (each serve counts as a use)."""
    return _CacheSource(cache)


async def serve_artefact(source: BlobSource, request: cpb.FetchArtefactRequest, context: grpc.aio.ServicerContext,
                         *, chunk_bytes: int = CHUNK_BYTES,
                         on_sent: Callable[[int], None] | None = None) -> AsyncIterator[cpb.ArtefactChunk]:
    """The chunks of artefact ``request.digest`` from ``request.offset`` on; the first carries the
    whole size (and is sent even when there is nothing left to send). The file is read in a worker
    thread. ``on_sent`` gets each chunk's length once it is sent. Failures abort the call with
    their status: INVALID_ARGUMENT for a bad digest or offset, NOT_FOUND for an unknown artefact."""
    try:
        f, size = await asyncio.to_thread(source.open, check_digest(request.digest))
    except FoglineError as exc:
        await abort(context, exc)
        return
    try:
        if not 0 <= request.offset <= size:
            raise InvalidInputError(f"offset {request.offset} is outside artefact {short_digest(request.digest)} "
                                    f"of {size} bytes: ask for an offset from 0 to {size}")
        await asyncio.to_thread(f.seek, request.offset)
        first = True
        while (data := await asyncio.to_thread(f.read, chunk_bytes)) or first:
            yield cpb.ArtefactChunk(data=data, size=size if first else 0)
            first = False
            if on_sent is not None and data:
                on_sent(len(data))
    except FoglineError as exc:
        await abort(context, exc)
    except OSError as exc:
        await abort(context, UnavailableError(f"artefact {short_digest(request.digest)} cannot be read here: {exc}"))
    finally:
        f.close()


# --- fetching ----------------------------------------------------------------------------------------

OpenStream = Callable[[str, int], AsyncIterator[tuple[bytes, int]]]
"""(digest, offset) -> the chunks from ``offset`` on as (data, the whole size or 0); a failure raises
the FoglineError it stands for."""


def stub_stream(stub: cpb_grpc.ControlStub, *, timeout_s: float | None = None, peer: str = "") -> OpenStream:
    """FetchArtefact over ``stub``; ``timeout_s`` bounds each stream (a resumed one starts afresh),
    ``peer`` (e.g. ``cloud master 10.0.0.1:7000``) names the other end in transport failures."""

    async def open_stream(digest: str, offset: int) -> AsyncIterator[tuple[bytes, int]]:
        call = stub.FetchArtefact(cpb.FetchArtefactRequest(digest=digest, offset=offset), timeout=timeout_s)
        try:
            async for chunk in call:
                yield chunk.data, chunk.size
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, peer=peer) from None
        finally:
            call.cancel()

    return open_stream


class RateLimit:
    """A token bucket of ``rate_bytes_s`` bytes a second, ``burst_bytes`` deep: :meth:`spend` sleeps
    as long as it takes for the bytes taken so far to stay under the rate on average."""

    def __init__(self, rate_bytes_s: float, *, burst_bytes: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_bytes_s = rate_bytes_s
        self.burst_bytes = rate_bytes_s * BURST_S if burst_bytes is None else burst_bytes
        self._clock = clock
        self._tokens = self.burst_bytes
        self._at = clock()

    async def spend(self, n_bytes: int) -> None:
        """Take ``n_bytes`` (already received); sleep off the debt if the bucket is short."""
        now = self._clock()
        self._tokens = min(self.burst_bytes, self._tokens + (now - self._at) * self.rate_bytes_s) - n_bytes
        self._at = now
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate_bytes_s)


def _resumable(err: FoglineError) -> bool:
    """A broken link, a hung or a busy peer: worth asking again (a message over a limit is not)."""
    return err.code in RETRYABLE_CODES and not isinstance(err, PayloadTooLargeError)


class ArtefactFetcher:
    """Downloads artefacts into partial files over ``open_stream``, resuming where a file ends.

    A stream that breaks (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) or ends early is asked
    again from where the file ends, after a backoff from ``backoff_s``; the fetch fails after
    ``attempts`` tries in a row that brought no byte, keeping the partial file for a later resume.
    ``rate_mbps`` (megabits a second) holds the average rate under it. ``on_progress(digest, done,
    size)`` follows each chunk. The digest is not checked here: see :func:`download`."""

    def __init__(self, open_stream: OpenStream, *, rate_mbps: float | None = None, attempts: int = 5,
                 backoff_s: float = 0.2, on_progress: Callable[[str, int, int], None] | None = None) -> None:
        if attempts < 1 or backoff_s <= 0 or (rate_mbps is not None and rate_mbps <= 0):
            raise ValueError("an artefact fetcher needs attempts >= 1, backoff_s > 0 and rate_mbps > 0 (or None)")
        self.open_stream = open_stream
        self.rate_mbps = rate_mbps
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.on_progress = on_progress
        self._limit = RateLimit(rate_mbps * 1e6 / 8) if rate_mbps is not None else None
        """One bucket for every fetch: concurrent ones share the rate."""

    async def fetch(self, digest: str, size: int, part: Path) -> None:
        """Make ``part`` hold the ``size`` bytes of ``digest``, appending from its current size.
        InvalidInputError if the peer has a different size or sends more; after ``attempts`` fruitless
        tries, the last failure (its code, this artefact in its message)."""
        check_digest(digest)
        backoff = Backoff(initial_s=self.backoff_s, max_s=max(self.backoff_s, MAX_BACKOFF_S))
        fruitless = 0
        while (done := _size(part)) < size or (size == 0 and not part.exists()):
            try:
                await self._stream(digest, size, part, done)
                if _size(part) >= size:
                    return
                raise UnavailableError(f"the stream ended at {_size(part)} of {size} bytes")
            except FoglineError as exc:
                if not _resumable(exc):
                    raise
                fruitless = 0 if _size(part) > done else fruitless + 1
                if fruitless >= self.attempts:
                    raise error_for_code(exc.code, f"fetching artefact {short_digest(digest)}: {exc.message} "
                                                   f"({self.attempts} tries in a row brought nothing; {_size(part)} "
                                                   f"of {size} bytes are kept to resume)") from None
                if fruitless == 0:
                    backoff.reset()
                await asyncio.sleep(backoff.next_delay())
        if done > size:
            raise self._too_much(digest, size, part)

    async def _stream(self, digest: str, size: int, part: Path, offset: int) -> None:
        """One stream from ``offset``, appended to ``part`` as it arrives."""
        stream = self.open_stream(digest, offset)
        try:
            await self._append_all(stream, digest, size, part, offset)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # NOTE: ends the call now, not when the generator is collected
                await aclose()

    async def _append_all(self, stream: AsyncIterator[tuple[bytes, int]], digest: str, size: int, part: Path,
                          offset: int) -> None:
        done = offset
        with open(part, "ab") as f:
            first = True
            async for data, announced in stream:
                if first and announced and announced != size:
                    raise InvalidInputError(f"artefact {short_digest(digest)} is {announced} bytes at the source, "
                                            f"not the {size} its manifest says: the manifest or the source is wrong")
                first = False
                if done + len(data) > size:
                    raise self._too_much(digest, size, part)
                await asyncio.to_thread(_append, f, data)
                done += len(data)
                if self.on_progress is not None:
                    self.on_progress(digest, done, size)
                if self._limit is not None:
                    await self._limit.spend(len(data))

    @staticmethod
    def _too_much(digest: str, size: int, part: Path) -> InvalidInputError:
        part.unlink(missing_ok=True)  # NOTE: not this artefact; a retry starts from zero
        return InvalidInputError(f"artefact {short_digest(digest)} arrived longer than its {size} bytes; "
                                 "the partial file was removed")


def _append(f: IO[bytes], data: bytes) -> None:
    f.write(data)
    f.flush()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def download(fetcher: ArtefactFetcher, digest: str, size: int, part: Path,
                   commit: Callable[[str, Path], Path], *, attempts: int = 3) -> Path:
    """Fetch ``digest`` into ``part`` and ``commit`` it (e.g. :meth:`ArtefactCache.commit`, run in a
    worker thread); the committed path. Bytes that arrive corrupted (a digest mismatch: ``commit``
    deleted ``part``) are fetched again from zero, up to ``attempts`` downloads in all."""
    for _ in range(attempts):
        await fetcher.fetch(digest, size, part)
        try:
            return await asyncio.to_thread(commit, digest, part)
        except DigestMismatchError:
            continue
    raise InvalidInputError(f"artefact {short_digest(digest)} kept arriving corrupted: {attempts} downloads in a "
                            "row did not match its digest; check the source's copy and the link")


def verify_and_place(part: Path, digest: str, dest: Path) -> Path:
    """For a device (no cache): check ``part`` against ``digest`` (a mismatch deletes it and raises
    :class:`~fogline.core.lifecycle.cache.DigestMismatchError`), then move it to ``dest``; ``dest``.
    Hashes the whole file: call it off the event loop."""
    verify(part, check_digest(digest))
    os.replace(part, dest)
    return dest
