"""A process's certificate, key and CA bundle, read from files and re-read when they change.

:class:`TlsMaterial` holds what was last read and a ``generation`` that goes up on each change.
``watch()`` polls the files; servers hand the new certificate to the next handshakes, clients open
fresh channels with it (its listeners). A half-written change (a certificate that does not match
its key yet) is ignored until the files agree again: what was read last keeps serving.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RELOAD_POLL_S = 1.0


class ClientAuth(enum.Enum):
    """Whether a server asks its clients for a certificate.

    NOTE: grpcio offers a server either "require and verify" or "do not request": with ``OPTIONAL``
    a gRPC server does not ask (clients authenticate with API keys, if any), while a REST server
    asks and verifies a certificate the client offers."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRE = "require"


@dataclass(frozen=True)
class TlsFiles:
    """Where a process's PEM files are: its certificate (chain), its private key, the fleet CA."""

    cert: Path
    key: Path
    ca: Path

    def missing(self) -> list[Path]:
        """The files that do not exist."""
        return [p for p in (self.cert, self.key, self.ca) if not Path(p).is_file()]


@dataclass(frozen=True)
class Pem:
    """The contents of :class:`TlsFiles`."""

    cert: bytes
    key: bytes = field(repr=False)
    ca: bytes


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """TLS of one process: its files, and whether its inference server requires client certificates.
    The control plane always requires them; the admin API always asks for one."""

    files: TlsFiles
    client_auth: ClientAuth = ClientAuth.REQUIRE


def _stamp(files: TlsFiles) -> tuple[tuple[int, int], ...]:
    out = []
    for path in (files.cert, files.key, files.ca):
        st = os.stat(path)
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


def read_pem(files: TlsFiles) -> Pem:
    """The files' contents; ValueError if the certificate does not match the key or a file is unreadable."""
    missing = files.missing()
    if missing:
        raise ValueError(f"TLS file not found: {', '.join(map(str, missing))}")
    pem = Pem(cert=Path(files.cert).read_bytes(), key=Path(files.key).read_bytes(), ca=Path(files.ca).read_bytes())
    _check_pair(files)
    return pem


def _check_pair(files: TlsFiles) -> None:
    """ValueError unless the certificate and the key belong together (ssl checks it on loading)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key)
        context.load_verify_locations(cafile=str(files.ca))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS files {files.cert} / {files.key} / {files.ca} do not load: {exc}") from None


class TlsMaterial:
    """The PEM files of one process, as last read, with a generation counter and change listeners."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.pem = read_pem(files)
        self._stamp = _stamp(files)
        self.generation = 0
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) after each change of the files."""
        self._listeners.append(listener)

    def poll(self) -> bool:
        """Re-read the files if they changed; whether the material did."""
        try:
            stamp = _stamp(self.files)
            if stamp == self._stamp:
                return False
            pem = read_pem(self.files)
        except (OSError, ValueError) as exc:
            log.warning("TLS files changed but cannot be used yet (%s); keeping the current certificate", exc)
            return False
        self._stamp = stamp
        if pem == self.pem:
            return False
        self.pem, self.generation = pem, self.generation + 1
        log.info("TLS certificate reloaded from %s (generation %d)", self.files.cert, self.generation)
        for listener in self._listeners:
            listener()
        return True

    async def watch(self, interval_s: float = RELOAD_POLL_S) -> None:
        """Poll the files forever (run as a task)."""
        while True:
            await asyncio.sleep(interval_s)
            self.poll()


def write_private(path: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only when ``mode`` says so: a reader
    (a reloading server) sees the old file or the new one, never half of it. ``exclusive``: never
    replace a file, raise FileExistsError instead, even for one another process created meanwhile
    (a hard link, unlike a rename, never replaces)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
