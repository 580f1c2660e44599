"""An attacker's tools against a secure Fogline fleet, for the security acceptance tests: raw
``fogline.control.v1`` calls over channels with whatever credentials the attacker holds (none, a
certificate of another CA, a stolen fleet certificate), plaintext health checks, a TLS handshake
that reads the certificate a server presents, and addresses where nothing listens.

Every call answers its gRPC status code (``OK`` for a success) instead of raising: the tests compare
codes. Nothing here is a fake: these are real channels and real handshakes against real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fogline._proto import control_pb2 as cpb
from fogline._proto import control_pb2_grpc as cpb_grpc

CALL_TIMEOUT_S = 5.0
CONTROL_MESSAGE_BYTES = 4 * 1024 * 1024
"""What the attacker's channel lets through: more than the masters' 1 MiB, so that a master's own limit
is what refuses an oversized call."""


@dataclass(frozen=True)
class Credentials:
    """What the attacker presents: the CA it trusts for the server (None: plaintext), and a certificate
    and key (PEM bytes) as its client certificate (None: none)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def files(cls, ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None) -> Credentials:
        """The credentials in PEM files."""
        read = lambda path: Path(path).read_bytes() if path is not None else None  # noqa: E731
        return cls(read(ca), read(cert), read(key))

    def channel(self, address: str, server_name: str | None = None) -> grpc.aio.Channel:
        """A channel to ``address`` with these credentials, checking the server carries ``server_name``."""
        options: list[tuple[str, int | str]] = [("grpc.max_send_message_length", CONTROL_MESSAGE_BYTES),
                                                ("grpc.max_receive_message_length", CONTROL_MESSAGE_BYTES)]
        if self.ca is None:
            return grpc.aio.insecure_channel(address, options=options)
        if server_name is not None:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                             certificate_chain=self.cert)
        return grpc.aio.secure_channel(address, creds, options=options)


PLAINTEXT = Credentials()


@dataclass
class Answer:
    """The status code of one call, and what the server said."""

    code: grpc.StatusCode
    details: str = ""
    reply: object = None


def member(member_id: str, *, service: str = "device", region: str = "", address: str = "127.0.0.1:1",
           models: Sequence[str] = ("mlp",)) -> cpb.Member:
    """A Register message's member."""
    return cpb.Member(id=member_id, service=service, region=region, address=address, models=list(models))


class ControlAttacker:
    """Raw Control service calls to one master's control (or enrolment) port with ``credentials``."""

    def __init__(self, address: str, credentials: Credentials, server_name: str | None = None) -> None:
        self.address = address
        self._channel = credentials.channel(address, server_name)
        self._stub = cpb_grpc.ControlStub(self._channel)

    async def _call(self, method: str, request: object) -> Answer:
        try:
            reply = await getattr(self._stub, method)(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "")
        return Answer(grpc.StatusCode.OK, reply=reply)

    async def register(self, m: cpb.Member) -> Answer:
        """Register ``m``."""
        return await self._call("Register", cpb.RegisterRequest(member=m))

    async def heartbeat(self, member_id: str, models: Sequence[str] = ()) -> Answer:
        """Heartbeat ``member_id`` (with ``models``, if any); the reply's ``known`` says whether it is a member."""
        return await self._call("Heartbeat", cpb.HeartbeatRequest(id=member_id, models=list(models)))

    async def deregister(self, member_id: str) -> Answer:
        """Deregister ``member_id``."""
        return await self._call("Deregister", cpb.DeregisterRequest(id=member_id))

    async def watch(self, watcher_id: str, region: str) -> Answer:
        """Open WatchTopology: OK once a first topology arrives, else the stream's status."""
        call = self._stub.WatchTopology(cpb.WatchTopologyRequest(watcher_id=watcher_id, region=region),
                                        timeout=CALL_TIMEOUT_S)
        try:
            async for topology in call:
                return Answer(grpc.StatusCode.OK, reply=topology)
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "")
        finally:
            call.cancel()
        return Answer(grpc.StatusCode.OK)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()


@contextlib.asynccontextmanager
async def control(address: str, credentials: Credentials,
                  server_name: str | None = None) -> AsyncIterator[ControlAttacker]:
    """A :class:`ControlAttacker`, closed on exit."""
    attacker = ControlAttacker(address, credentials, server_name)
    try:
        yield attacker
    finally:
        await attacker.close()


class Heartbeats:
    """Keeps a member the attacker registered alive: a heartbeat every ``interval_s`` until stopped.
    ``answers`` are the codes (and ``known``) heard, in order."""

    def __init__(self, attacker: ControlAttacker, member_id: str, *, interval_s: float = 0.5) -> None:
        self.attacker = attacker
        self.member_id = member_id
        self.interval_s = interval_s
        self.answers: list[tuple[grpc.StatusCode, bool]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Heartbeats:
        """Start heartbeating (on the running loop)."""
        self._task = asyncio.create_task(self._run(), name=f"heartbeats of {self.member_id}")
        return self

    async def _run(self) -> None:
        while True:
            answer = await self.attacker.heartbeat(self.member_id)
            known = bool(getattr(answer.reply, "known", False))
            self.answers.append((answer.code, known))
            await asyncio.sleep(self.interval_s)  # NOTE: a heartbeat cadence, not a wait for a condition

    async def stop(self) -> None:
        """Stop heartbeating."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def plaintext_health(address: str) -> grpc.StatusCode:
    """The code of a grpc.health.v1 Check sent in plaintext to ``address``."""
    channel = grpc.aio.insecure_channel(address)
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                        timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()
    return grpc.StatusCode.OK


def dead_address(host: str = "127.0.0.1") -> str:
    """host:port where nothing listens: a port the system just handed out, closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"{host}:{port}"


def presented_serial(address: str, ca: str | Path, cert: str | Path, key: str | Path,
                     server_hostname: str = "127.0.0.1") -> int:
    """The serial number of the certificate the server at ``address`` presents to a NEW TLS connection
    (HTTP/2 by ALPN, as gRPC speaks; ``cert``/``key`` as the client certificate)."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT_S) as raw, \
            context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None, f"{address} presented no certificate"
    return int(x509.load_der_x509_certificate(der).serial_number)
