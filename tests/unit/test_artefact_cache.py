"""The artefact cache on real files: the size bound, least recently used out first, pinned blobs
kept, digests checked before a blob is used, and what a restart keeps."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from fogline.core.lifecycle import cache as cache_module
from fogline.core.lifecycle.cache import ArtefactCache, DigestMismatchError, check_digest
from fogline.errors import InvalidInputError, OverloadedError

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def store(cache: ArtefactCache, data: bytes) -> str:
    """Download ``data`` into the cache as a fetch would: partial, write, commit; its digest."""
    digest = sha(data)
    part = cache.partial(digest, len(data))
    part.write_bytes(data)
    cache.commit(digest, part)
    return digest


def held(cache: ArtefactCache, *blobs: bytes) -> list[bytes]:
    """Which of ``blobs`` the cache holds (without counting it as a use)."""
    return [b for b in blobs if cache.has(sha(b))]


A, B, C, D = (bytes([n]) * 100 for n in range(4))


def test_a_committed_blob_is_there_read_only_and_the_part_is_gone(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=1000)
    digest = sha(A)
    part = cache.partial(digest, len(A))
    assert part.name.endswith(".part") and not cache.has(digest) and cache.path(digest) is None
    part.write_bytes(A)
    blob = cache.commit(digest, part)
    assert cache.has(digest) and cache.path(digest) == blob and blob.read_bytes() == A
    assert blob.name == digest.removeprefix("sha256:") and blob.stat().st_mode & 0o222 == 0
    assert not part.exists()


def test_the_least_recently_used_blob_goes_first(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=300)
    for blob in (A, B, C):
        store(cache, blob)
    assert cache.path(sha(A)) is not None  # A is now the most recent: B is the oldest
    store(cache, D)
    assert held(cache, A, B, C, D) == [A, C, D]
    store(cache, B)
    assert held(cache, A, B, C, D) == [A, B, D]
    assert not (tmp_path / sha(C).removeprefix("sha256:")).exists()


def test_pinned_blobs_are_never_evicted(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=300)
    for blob in (A, B, C):
        store(cache, blob)
    cache.pin([sha(A), sha(B)])
    store(cache, D)
    assert held(cache, A, B, C, D) == [A, B, D]
    cache.pin([sha(A), sha(B), sha(D)])
    with pytest.raises(OverloadedError, match=r"no room for artefact sha256:\w{12}\.\. .*pinned artefacts hold "
                                              r"0\.0 MiB.*--cache-mb"):
        cache.partial(sha(C), len(C))
    assert held(cache, A, B, C, D) == [A, B, D]
    cache.pin([])
    store(cache, C)
    assert held(cache, A, B, C, D) == [B, C, D]


def test_downloads_in_progress_count_against_the_limit(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=300)
    store(cache, A)
    cache.partial(sha(B), 100)
    cache.partial(sha(C), 100)
    cache.partial(sha(D), 100)  # the room of A: it goes, the three downloads stay
    assert held(cache, A) == [] and cache.usage()["bytes"] == 0
    with pytest.raises(OverloadedError, match=r"downloads in progress 0\.0 MiB"):
        cache.partial(sha(b"e" * 100), 100)
    cache.discard(sha(D))
    cache.partial(sha(b"e" * 100), 100)


def test_an_artefact_larger_than_the_cache_is_refused_saying_the_flag(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=64 * MIB)
    digest = sha(b"large")
    with pytest.raises(OverloadedError) as caught:
        cache.partial(digest, 80 * MIB)
    assert str(caught.value) == (f"artefact {digest[:19]}.. of 80.0 MiB does not fit the cache limit of 64.0 MiB "
                                 "(--cache-mb); raise it")


def test_a_full_disk_is_refused_before_anything_is_evicted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=10 * MIB)
    store(cache, A)

    class Usage:
        free = 1 * MIB

    def disk_usage(path: Any) -> Usage:
        return Usage()

    monkeypatch.setattr(cache_module.shutil, "disk_usage", disk_usage)
    with pytest.raises(OverloadedError, match=r"^disk full: artefact sha256:\w{12}\.\. needs 3\.0 MiB, 1\.0 MiB free"):
        cache.partial(sha(B), 3 * MIB)
    assert held(cache, A) == [A]


def test_a_mismatching_part_is_deleted_and_never_used(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=1000)
    digest = sha(A)
    part = cache.partial(digest, len(A))
    part.write_bytes(B)
    with pytest.raises(DigestMismatchError) as caught:
        cache.commit(digest, part)
    assert isinstance(caught.value, InvalidInputError)
    assert str(caught.value) == (f"digest mismatch: got {sha(B)[:19]}.., expected {digest[:19]}..; "
                                 "the transfer was corrupted and is retried")
    assert not part.exists() and not cache.has(digest) and cache.path(digest) is None
    assert cache.usage()["partial"] == 0


def test_a_part_resumes_after_a_restart_and_crash_leftovers_go(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=1000)
    part = cache.partial(sha(A), len(A))
    part.write_bytes(A[:40])
    (tmp_path / "leftover.tmp").write_bytes(b"x")
    reopened = ArtefactCache(tmp_path, max_bytes=1000)
    assert not (tmp_path / "leftover.tmp").exists()
    assert reopened.usage()["partial"] == 1 and reopened.usage()["partial_bytes"] == 40
    again = reopened.partial(sha(A), len(A))
    assert again == part and again.read_bytes() == A[:40]
    with again.open("ab") as f:
        f.write(A[40:])
    reopened.commit(sha(A), again)
    assert reopened.path(sha(A)) is not None


def test_a_reopened_cache_keeps_its_blobs_and_their_order(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=300)
    for blob in (A, B, C):
        store(cache, blob)
    cache.path(sha(A))
    reopened = ArtefactCache(tmp_path, max_bytes=300)
    assert held(reopened, A, B, C) == [A, B, C] and reopened.path(sha(B)) is not None
    store(reopened, D)  # C is the oldest now: B was used after the reopen, A before it
    assert held(reopened, A, B, C, D) == [A, B, D]


def test_a_lower_limit_on_reopen_evicts_the_oldest(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=300)
    for blob in (A, B, C):
        store(cache, blob)
    reopened = ArtefactCache(tmp_path, max_bytes=200)
    assert held(reopened, A, B, C) == [B, C]


def test_usage(tmp_path: Path) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=1000)
    assert cache.usage() == {"bytes": 0, "max_bytes": 1000, "blobs": 0, "partial": 0, "partial_bytes": 0}
    store(cache, A)
    store(cache, B[:50])
    cache.partial(sha(C), len(C)).write_bytes(C[:30])
    assert cache.usage() == {"bytes": 150, "max_bytes": 1000, "blobs": 2, "partial": 1, "partial_bytes": 30}


@pytest.mark.parametrize("digest", ["", "sha256:", "sha256:" + "A" * 64, "md5:" + "0" * 64, "sha256:" + "0" * 63,
                                    "sha256:" + "0" * 64 + "/../x"])
def test_a_malformed_digest_is_refused(tmp_path: Path, digest: str) -> None:
    cache = ArtefactCache(tmp_path, max_bytes=1000)
    with pytest.raises(InvalidInputError, match="sha256:<64 lowercase hex digits>"):
        check_digest(digest)
    for call in (lambda: cache.partial(digest, 1), lambda: cache.path(digest), lambda: cache.has(digest),
                 lambda: cache.pin([digest])):
        with pytest.raises(InvalidInputError):
            call()
