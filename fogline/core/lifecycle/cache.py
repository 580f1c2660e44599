"""The artefact cache of an edge master: model blobs by digest on local disk, bounded, least recently
used out first.

An edge master fetches each artefact its region needs from the cloud master once and serves it to
all its devices from here. The disk is finite, so the cache holds at most ``max_bytes``: to make
room for a new artefact it evicts the complete blobs used longest ago, except the *pinned* ones (the
versions the region's plans hold now, which its devices may ask for at any moment).

Layout of the cache directory::

    <dir>/<hex>        a complete blob, verified against its digest (read-only)
    <dir>/<hex>.part   a download in progress: kept across restarts, so a transfer resumes
    <dir>/*.tmp        leftovers of a crash: removed on open

A download goes through :meth:`ArtefactCache.partial` (room is made, the path to write) and
:meth:`ArtefactCache.commit` (sha256 checked, renamed into place)::

    cache = ArtefactCache(Path("/var/cache/fogline"), max_bytes=2 * 1024**3)
    part = cache.partial(ref.digest, ref.size)        # resume from part's size, if it exists
    ...                                               # append the bytes
    blob = cache.commit(ref.digest, part)             # DigestMismatchError: part is gone, retry

The least-recent order is the blobs' modification times, which every use sets, so it survives a
restart. The cache is thread-safe: commits hash in a worker thread while the event loop serves.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from fogline.core.lifecycle.registry import DIGEST_PREFIX, file_digest
from fogline.errors import InvalidInputError, OverloadedError, echo_name

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX_NAME = re.compile(r"[0-9a-f]{64}")
PART_SUFFIX = ".part"
MIB = 1024 * 1024


class DigestMismatchError(InvalidInputError):
    """The bytes received do not hash to the digest asked for: the transfer was corrupted (the
    partial file is gone by then, so a retry starts from zero)."""


def check_digest(digest: str) -> str:
    """``digest`` if it is ``sha256:<64 lowercase hex digits>``; InvalidInputError saying the form otherwise."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidInputError(f"digest {echo_name(str(digest))} is not valid: an artefact is named "
                                "sha256:<64 lowercase hex digits>")
    return digest


def short_digest(digest: str) -> str:
    """``sha256:`` and the first 12 hex digits, for messages."""
    return digest[: len(DIGEST_PREFIX) + 12] + ".." if len(digest) > len(DIGEST_PREFIX) + 12 else digest


def mib(n_bytes: float) -> str:
    """``n_bytes`` in MiB with one decimal, for messages."""
    return f"{n_bytes / MIB:.1f} MiB"


def verify(part: Path, digest: str) -> None:
    """Check that the file ``part`` hashes to ``digest``; if not, delete it and raise
    :class:`DigestMismatchError`. Reads the whole file: call it off the event loop."""
    got = file_digest(part)
    if got != digest:
        part.unlink(missing_ok=True)
        raise DigestMismatchError(f"digest mismatch: got {short_digest(got)}, expected {short_digest(digest)}; "
                                  "the transfer was corrupted and is retried")


class ArtefactCache:
    """Blobs by digest on disk under ``directory`` (files named by hex digest), at most ``max_bytes``
    in all; least recently used complete blobs are evicted to make room; pinned digests never are.

    The bound counts complete blobs and downloads in progress (each at the size it was announced
    with, or its size on disk if that is more)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("an artefact cache needs max_bytes > 0")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._blobs: OrderedDict[str, int] = OrderedDict()
        """Complete blobs, hex digest -> size, least recently used first."""
        self._reserved: dict[str, int] = {}
        """Downloads announced through :meth:`partial`, hex digest -> their whole size."""
        self._pinned: frozenset[str] = frozenset()
        self._last_touch_ns = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._reopen()
        with self._lock:
            self._evict_over_limit(keep="")

    # --- reading -----------------------------------------------------------------------------------

    def path(self, digest: str) -> Path | None:
        """The complete, verified blob ``digest``, now the most recently used; None if the cache has none."""
        hex_ = check_digest(digest).removeprefix(DIGEST_PREFIX)
        with self._lock:
            if hex_ not in self._blobs:
                return None
            path = self.directory / hex_
            try:
                self._touch(path)
            except FileNotFoundError:  # NOTE: removed behind the cache's back
                del self._blobs[hex_]
                return None
            self._blobs.move_to_end(hex_)
            return path

    def has(self, digest: str) -> bool:
        """Whether the blob ``digest`` is complete here (does not count as a use)."""
        with self._lock:
            return check_digest(digest).removeprefix(DIGEST_PREFIX) in self._blobs

    def usage(self) -> dict[str, int]:
        """Complete blobs (their bytes and count), the limit, and downloads in progress (their files
        and the bytes those hold now)."""
        parts = self._part_files()
        with self._lock:
            return {"bytes": sum(self._blobs.values()), "max_bytes": self.max_bytes, "blobs": len(self._blobs),
                    "partial": len(parts), "partial_bytes": sum(parts.values())}

    # --- downloading -------------------------------------------------------------------------------

    def partial(self, digest: str, size: int) -> Path:
        """Where to write (or resume: append to) the download of ``digest``, ``size`` bytes in all.
        Room is made first by evicting the least recently used unpinned blobs; OverloadedError when
        the artefact is larger than the cache, when pinned blobs and other downloads leave no room,
        or when the disk has no room."""
        hex_ = check_digest(digest).removeprefix(DIGEST_PREFIX)
        if size < 0:
            raise InvalidInputError(f"artefact {short_digest(digest)} has a negative size ({size})")
        if size > self.max_bytes:
            raise OverloadedError(f"artefact {short_digest(digest)} of {mib(size)} does not fit the cache "
                                  f"limit of {mib(self.max_bytes)} (--cache-mb); raise it")
        part = self.directory / (hex_ + PART_SUFFIX)
        on_disk = _size_or_zero(part)
        if on_disk > size:  # NOTE: not a prefix of this artefact: start over
            part.unlink(missing_ok=True)
            on_disk = 0
        parts = self._part_files()
        with self._lock:
            victims = self._victims(digest, size, parts)
            self._check_disk(digest, size - on_disk, freed=sum(self._blobs[v] for v in victims))
            for victim in victims:
                self._evict(victim)
            self._reserved[hex_] = size
        return part

    def commit(self, digest: str, part: Path) -> Path:
        """Check that ``part`` hashes to ``digest`` and move it into place (read-only); the blob's path.
        A mismatch deletes ``part`` and raises :class:`DigestMismatchError`. Hashes the whole file:
        call it off the event loop."""
        hex_ = check_digest(digest).removeprefix(DIGEST_PREFIX)
        try:
            verify(part, digest)
        except DigestMismatchError:
            with self._lock:
                self._reserved.pop(hex_, None)
            raise
        target = self.directory / hex_
        os.chmod(part, 0o444)
        os.replace(part, target)
        with self._lock:
            self._reserved.pop(hex_, None)
            self._blobs[hex_] = target.stat().st_size
            self._blobs.move_to_end(hex_)
            self._touch(target)
            self._evict_over_limit(keep=hex_)
        return target

    def discard(self, digest: str) -> None:
        """Give up the download of ``digest``: its partial file and its room go."""
        hex_ = check_digest(digest).removeprefix(DIGEST_PREFIX)
        with self._lock:
            self._reserved.pop(hex_, None)
            (self.directory / (hex_ + PART_SUFFIX)).unlink(missing_ok=True)

    def pin(self, digests: Iterable[str]) -> None:
        """Replace the pinned set: these digests are never evicted (those not here yet, once they are)."""
        pinned = frozenset(check_digest(d).removeprefix(DIGEST_PREFIX) for d in digests)
        with self._lock:
            self._pinned = pinned

    # --- room --------------------------------------------------------------------------------------

    def _victims(self, digest: str, size: int, parts: dict[str, int]) -> list[str]:
        """The blobs to evict, least recently used first, for ``size`` more bytes; OverloadedError if
        evicting every unpinned one would not do."""
        hex_ = digest.removeprefix(DIGEST_PREFIX)
        others = {h: max(self._reserved.get(h, 0), parts.get(h, 0))
                  for h in self._reserved.keys() | parts.keys() if h != hex_}
        used = sum(self._blobs.values()) + sum(others.values()) + size
        victims = []
        for candidate, blob_size in self._blobs.items():
            if used <= self.max_bytes:
                break
            if candidate not in self._pinned:
                victims.append(candidate)
                used -= blob_size
        if used > self.max_bytes:
            pinned = sum(s for h, s in self._blobs.items() if h in self._pinned)
            raise OverloadedError(
                f"no room for artefact {short_digest(digest)} of {mib(size)}: pinned artefacts hold {mib(pinned)} "
                f"and downloads in progress {mib(sum(others.values()))} of the cache limit of "
                f"{mib(self.max_bytes)} (--cache-mb); raise it")
        return victims

    def _check_disk(self, digest: str, needed: int, *, freed: int) -> None:
        free = shutil.disk_usage(self.directory).free + freed
        if needed > free:
            raise OverloadedError(f"disk full: artefact {short_digest(digest)} needs {mib(needed)}, "
                                  f"{mib(free)} free in {self.directory}; free space on that disk")

    def _evict_over_limit(self, *, keep: str) -> None:
        """Evict least recently used unpinned blobs (never ``keep``) while the blobs exceed the limit."""
        used = sum(self._blobs.values())
        for candidate in [h for h in self._blobs if h not in self._pinned and h != keep]:
            if used <= self.max_bytes:
                return
            used -= self._blobs[candidate]
            self._evict(candidate)

    def _evict(self, hex_: str) -> None:
        del self._blobs[hex_]
        (self.directory / hex_).unlink(missing_ok=True)

    # --- on disk -----------------------------------------------------------------------------------

    def _reopen(self) -> None:
        """Index the blobs there are, least recently used first; drop leftovers of a crash."""
        found = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".tmp"):
                Path(entry.path).unlink(missing_ok=True)
            elif _HEX_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                stat = entry.stat()
                found.append((stat.st_mtime_ns, entry.name, stat.st_size))
        for mtime_ns, hex_, size in sorted(found):
            self._blobs[hex_] = size
            self._last_touch_ns = max(self._last_touch_ns, mtime_ns)

    def _part_files(self) -> dict[str, int]:
        """Downloads in progress on disk: hex digest -> bytes so far."""
        parts = {}
        for entry in os.scandir(self.directory):
            hex_ = entry.name.removesuffix(PART_SUFFIX)
            if entry.name.endswith(PART_SUFFIX) and _HEX_NAME.fullmatch(hex_):
                parts[hex_] = _size_or_zero(Path(entry.path))
        return parts

    def _touch(self, path: Path) -> None:
        """Mark ``path`` used now. NOTE: explicit, strictly increasing times: the file system's own
        clock ticks coarsely, and two uses in one tick would leave the order to chance on reopen."""
        self._last_touch_ns = max(time.time_ns(), self._last_touch_ns + 1)
        os.utime(path, ns=(self._last_touch_ns, self._last_touch_ns))


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
