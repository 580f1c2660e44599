"""FetchArtefact over real gRPC: whole transfers, resuming after a broken link, corrupted bytes caught
before use, the rate limit, and the errors a fetcher sees."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from fogline._proto import control_pb2 as cpb
from fogline._proto import control_pb2_grpc as cpb_grpc
from fogline.adapters.grpc.artefacts import (
    ArtefactFetcher,
    BlobSource,
    OpenStream,
    cache_source,
    download,
    registry_source,
    serve_artefact,
    stub_stream,
    verify_and_place,
)
from fogline.adapters.grpc.server import bind, channel_options, create_server
from fogline.core.lifecycle.cache import ArtefactCache, DigestMismatchError
from fogline.core.lifecycle.registry import ModelRegistry
from fogline.errors import InvalidInputError, ModelNotFoundError, UnavailableError

MIB = 1024 * 1024
CHUNK = 64 * 1024


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_of(size: int) -> bytes:
    return os.urandom(size)


class Servicer(cpb_grpc.ControlServicer):
    """FetchArtefact only, as a master serves it; records each request's offset and the bytes sent."""

    def __init__(self, source: BlobSource) -> None:
        self.source = source
        self.offsets: list[int] = []
        self.sent: list[int] = []

    async def FetchArtefact(self, request: cpb.FetchArtefactRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[cpb.ArtefactChunk]:
        self.offsets.append(request.offset)
        async for chunk in serve_artefact(self.source, request, context, chunk_bytes=CHUNK, on_sent=self.sent.append):
            yield chunk


@dataclass
class Master:
    servicer: Servicer
    open_stream: OpenStream

    def fetcher(self, **kwargs: Any) -> ArtefactFetcher:
        return ArtefactFetcher(self.open_stream, backoff_s=0.01, **kwargs)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[BlobSource], Any]]:
    """Start a master on 127.0.0.1:0 serving a source; a fetcher's stream to it."""
    started: list[tuple[grpc.aio.Server, grpc.aio.Channel]] = []

    async def start(source: BlobSource) -> Master:
        servicer = Servicer(source)
        server, _ = create_server(registrars=[lambda s: cpb_grpc.add_ControlServicer_to_server(servicer, s)],
                                  max_message_bytes=MIB)
        port = bind(server, "127.0.0.1", 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(MIB))
        started.append((server, channel))
        return Master(servicer, stub_stream(cpb_grpc.ControlStub(channel), timeout_s=10, peer="test master"))

    yield start
    for server, channel in started:
        await channel.close()
        await server.stop(None)


class Files:
    """A source over blobs held in memory by digest; ``wrap`` may stand in for the file of each open."""

    def __init__(self, *blobs: bytes, wrap: Callable[[int, IO[bytes]], Any] | None = None) -> None:
        self.blobs = {sha(b): b for b in blobs}
        self.opens = 0
        self.wrap = wrap

    def open(self, digest: str) -> tuple[IO[bytes], int]:
        if digest not in self.blobs:
            raise ModelNotFoundError(f"artefact {digest[:19]}.. is not in this master's store")
        data = self.blobs[digest]
        self.opens += 1
        f: IO[bytes] = io.BytesIO(data)
        return (self.wrap(self.opens, f) if self.wrap else f), len(data)


class Breaking:
    """A file whose reads fail with ``failure`` once ``after`` bytes were read (a link that broke), or
    end there (``failure`` None: a stream that ends early)."""

    def __init__(self, f: IO[bytes], after: int, failure: Exception | None) -> None:
        self.f, self.after, self.failure, self.read_bytes = f, after, failure, 0

    def seek(self, offset: int) -> int:
        self.read_bytes = offset
        return self.f.seek(offset)

    def read(self, n: int) -> bytes:
        if self.read_bytes >= self.after:
            if self.failure is not None:
                raise self.failure
            return b""
        data = self.f.read(min(n, self.after - self.read_bytes))
        self.read_bytes += len(data)
        return data

    def close(self) -> None:
        self.f.close()


class Tampering:
    """A file whose first read comes back with one byte flipped."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.flipped = f, False

    def seek(self, offset: int) -> int:
        return self.f.seek(offset)

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if data and not self.flipped:
            self.flipped = True
            return bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def close(self) -> None:
        self.f.close()


def staged(root: Path, content: bytes) -> Path:
    (root / "1").mkdir(parents=True)
    (root / "config.toml").write_text('platform = "onnxruntime"\n')
    (root / "1" / "model.onnx").write_bytes(content)
    return root


async def test_a_blob_of_the_registry_arrives_whole_and_is_counted_once(serve: Any, tmp_path: Path) -> None:
    data = blob_of(3 * MIB)
    registry = ModelRegistry(tmp_path / "store")
    digest = registry.add("mlp", staged(tmp_path / "s", data)).files["model.onnx"]
    master = await serve(registry_source(registry))
    progress: list[int] = []
    fetcher = master.fetcher(on_progress=lambda d, done, size: progress.append(done))
    await fetcher.fetch(digest, len(data), tmp_path / "part")
    assert (tmp_path / "part").read_bytes() == data
    assert sum(master.servicer.sent) == len(data) and master.servicer.offsets == [0]
    assert progress[-1] == len(data) and progress == sorted(progress)
    placed = verify_and_place(tmp_path / "part", digest, tmp_path / "model.onnx")
    assert placed.read_bytes() == data and not (tmp_path / "part").exists()


async def test_an_edge_serves_from_its_cache_into_another_cache(serve: Any, tmp_path: Path) -> None:
    data = blob_of(MIB + 123)
    edge_cache = ArtefactCache(tmp_path / "edge", max_bytes=4 * MIB)
    digest = sha(data)
    part = edge_cache.partial(digest, len(data))
    part.write_bytes(data)
    edge_cache.commit(digest, part)
    master = await serve(cache_source(edge_cache))
    device_cache = ArtefactCache(tmp_path / "device", max_bytes=4 * MIB)
    blob = await download(master.fetcher(), digest, len(data), device_cache.partial(digest, len(data)),
                          device_cache.commit)
    assert blob.read_bytes() == data and device_cache.path(digest) == blob


@pytest.mark.parametrize("failure", [UnavailableError("the link broke"), None], ids=["aborted", "ended-early"])
async def test_a_broken_transfer_resumes_where_the_file_ends(serve: Any, tmp_path: Path,
                                                             failure: Exception | None) -> None:
    data = blob_of(2 * MIB)
    half = MIB
    source = Files(data, wrap=lambda n, f: Breaking(f, half, failure) if n == 1 else f)
    master = await serve(source)
    await master.fetcher().fetch(sha(data), len(data), tmp_path / "part")
    assert (tmp_path / "part").read_bytes() == data
    assert master.servicer.offsets == [0, half]
    assert len(data) <= sum(master.servicer.sent) <= len(data) + CHUNK


async def test_a_part_left_by_an_earlier_run_is_resumed(serve: Any, tmp_path: Path) -> None:
    data = blob_of(MIB)
    master = await serve(Files(data))
    (tmp_path / "part").write_bytes(data[:300_000])
    await master.fetcher().fetch(sha(data), len(data), tmp_path / "part")
    assert (tmp_path / "part").read_bytes() == data
    assert master.servicer.offsets == [300_000] and sum(master.servicer.sent) == len(data) - 300_000


async def test_a_link_that_stays_down_fails_after_the_attempts_and_keeps_the_part(serve: Any, tmp_path: Path) -> None:
    data = blob_of(MIB)
    source = Files(data, wrap=lambda n, f: Breaking(f, 100_000 if n == 1 else 0, UnavailableError("down")))
    master = await serve(source)
    with pytest.raises(UnavailableError, match=r"3 tries in a row brought nothing; 100000 of 1048576 bytes are kept"):
        await master.fetcher(attempts=3).fetch(sha(data), len(data), tmp_path / "part")
    assert master.servicer.offsets == [0, 100_000, 100_000, 100_000]
    assert (tmp_path / "part").read_bytes() == data[:100_000]


async def test_a_corrupted_transfer_is_caught_and_fetched_again(serve: Any, tmp_path: Path) -> None:
    data = blob_of(MIB)
    source = Files(data, wrap=lambda n, f: Tampering(f) if n == 1 else f)
    master = await serve(source)
    cache = ArtefactCache(tmp_path / "cache", max_bytes=4 * MIB)
    digest = sha(data)
    blob = await download(master.fetcher(), digest, len(data), cache.partial(digest, len(data)), cache.commit)
    assert blob.read_bytes() == data and cache.path(digest) == blob
    assert master.servicer.offsets == [0, 0]


async def test_an_artefact_that_always_arrives_corrupted_is_never_committed(serve: Any, tmp_path: Path) -> None:
    data = blob_of(200_000)
    master = await serve(Files(data, wrap=lambda n, f: Tampering(f)))
    cache = ArtefactCache(tmp_path / "cache", max_bytes=4 * MIB)
    digest = sha(data)
    part = cache.partial(digest, len(data))
    with pytest.raises(InvalidInputError, match=r"kept arriving corrupted: 3 downloads in a row did not match"):
        await download(master.fetcher(), digest, len(data), part, cache.commit, attempts=3)
    assert not cache.has(digest) and not part.exists() and cache.usage()["partial"] == 0
    assert master.servicer.offsets == [0, 0, 0]


async def test_a_device_refuses_to_place_a_corrupted_file(tmp_path: Path) -> None:
    part, dest = tmp_path / "part", tmp_path / "model.onnx"
    part.write_bytes(b"tampered")
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        verify_and_place(part, sha(b"original"), dest)
    assert not part.exists() and not dest.exists()


async def test_the_rate_limit_holds_the_average_under_it(serve: Any, tmp_path: Path) -> None:
    data = blob_of(MIB)
    master = await serve(Files(data))
    fetcher = master.fetcher(rate_mbps=4)  # 500 kB/s: 1 MiB takes 2.1 s, less a burst of 0.1 s
    started = time.monotonic()
    await fetcher.fetch(sha(data), len(data), tmp_path / "part")
    assert time.monotonic() - started >= 1.5
    assert (tmp_path / "part").read_bytes() == data


async def test_an_unknown_artefact_is_not_found(serve: Any, tmp_path: Path) -> None:
    master = await serve(Files(b"known"))
    with pytest.raises(ModelNotFoundError, match=r"artefact sha256:\w{12}\.\. is not in this master's store"):
        await master.fetcher().fetch(sha(b"unknown"), 7, tmp_path / "part")


async def test_a_malformed_digest_and_an_offset_past_the_end_are_refused(serve: Any, tmp_path: Path) -> None:
    data = b"12345"
    master = await serve(Files(data))
    with pytest.raises(InvalidInputError, match="sha256:<64 lowercase hex digits>"):
        async for _ in master.open_stream("sha256:nothex", 0):
            pass
    with pytest.raises(InvalidInputError, match=r"offset 6 is outside artefact sha256:\w{12}\.\. of 5 bytes"):
        async for _ in master.open_stream(sha(data), 6):
            pass
    chunks = [c async for c in master.open_stream(sha(data), 5)]
    assert chunks == [(b"", 5)]  # at the end: nothing to send, and the size


async def test_a_size_the_manifest_does_not_say_is_refused(serve: Any, tmp_path: Path) -> None:
    data = blob_of(1000)
    master = await serve(Files(data))
    with pytest.raises(InvalidInputError, match="is 1000 bytes at the source, not the 900 its manifest says"):
        await master.fetcher().fetch(sha(data), 900, tmp_path / "part")
