"""Triton's model-repository extension on a node's V2 port: ``RepositoryIndex``, ``RepositoryModelLoad``
and ``RepositoryModelUnload`` of ``inference.GRPCInferenceService``, for admins only.

So ``tritonclient.grpc``'s ``get_model_repository_index()``, ``load_model(name)`` and
``unload_model(name)`` work against a device node or a GPU worker. A load is the node's hot swap (see
:meth:`fogline.servers.model_server.ModelServer.load`): the latest version on disk, or the one the
parameter ``version`` names (a Fogline parameter: Triton loads what its version policy says).

A call is admitted with an admin client certificate (``spiffe://fogline/admin/<id>``; seen only when the
node requires client certificates) or the metadata ``authorization: Bearer <token>``, the token being
the content of the node's admin token file. Without a credential: UNAUTHENTICATED; with a fleet
certificate that is not an admin's: PERMISSION_DENIED; a node with neither configured refuses every call
(PERMISSION_DENIED). The token is never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from fogline._proto import inference_pb2 as pb
from fogline.adapters.grpc.v2 import AUTHORIZATION, SERVICE, _parse, abort
from fogline.adapters.tls.credentials import peer_identity
from fogline.adapters.tokenfile import AdminGate, AdminWording, TokenFile
from fogline.errors import InvalidInputError

log = logging.getLogger(__name__)

VERSION_PARAMETER = "version"
"""The load and unload parameter that names a version (string or int64)."""
DISABLED = ("repository control disabled on this node: start it with an admin token file, or with TLS "
            "requiring client certificates for admin certificates")
MISSING = ("missing admin credential: send metadata 'authorization: Bearer <token>' (the content of the "
           "node's admin token file) or connect with an admin client certificate")
NO_TOKENS = "this node takes no admin token (no admin token file): connect with an admin client certificate"
WORDING = AdminWording(disabled=DISABLED, missing=MISSING, no_tokens=NO_TOKENS, surface="repository control")
READY, UNAVAILABLE = "READY", "UNAVAILABLE"


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a model version and whether it serves (Triton's ModelIndex)."""

    name: str
    version: str
    state: str
    reason: str = ""


class RepositoryControl(Protocol):
    """What the node does for the extension (the model server)."""

    def repository_index(self) -> Sequence[IndexEntry]:
        """Every model version on disk or loaded."""
        ...

    async def load(self, name: str, version: str | None = None) -> Any:
        """Hot-swap ``name`` to ``version`` (default: the latest on disk)."""
        ...

    async def unload(self, name: str, version: str | None = None) -> Any:
        """Unload ``version`` of ``name`` (default: every version)."""
        ...


class RepositoryAuth:
    """Who may use the extension: holders of the admin token (``token``), and, when the node requires
    client certificates (``certificates``), clients whose certificate names an admin."""

    def __init__(self, token: TokenFile | None, *, certificates: bool) -> None:
        self._gate = AdminGate(token, certificates=certificates, wording=WORDING)

    def admit(self, context: grpc.aio.ServicerContext) -> str:
        """Who the call comes from (``token`` or the certificate's identity), for the log; raises
        UnauthenticatedError or PermissionDeniedError otherwise."""
        identity = peer_identity(context) if self._gate.certificates else None
        return self._gate.admit(identity, _bearer(context))


def _bearer(context: grpc.aio.ServicerContext) -> bytes | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata; None without one."""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode("utf-8", "surrogateescape")
    return None


Method = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class RepositoryServicer:
    """Serves the extension for ``control`` behind ``auth``: the credential is checked before the request
    is even parsed, so a caller without one learns nothing from garbage bytes."""

    def __init__(self, control: RepositoryControl, auth: RepositoryAuth) -> None:
        self.control = control
        self.auth = auth

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler of the three methods (beside the V2 one, same service name)."""
        methods: dict[str, Method] = {"RepositoryIndex": self._index, "RepositoryModelLoad": self._load,
                                      "RepositoryModelUnload": self._unload}
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._admitted(name, fn))
                    for name, fn in methods.items()}
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _admitted(self, name: str, method: Method) -> Method:
        async def serve(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                who = self.auth.admit(context)
                log.info("%s by %s", name, who)
                return await method(data, context)
            except Exception as exc:
                await abort(context, exc)
                raise  # unreachable: abort raises

        return serve

    async def _index(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = _parse(pb.RepositoryIndexRequest, data)
        reply = pb.RepositoryIndexResponse()
        for entry in self.control.repository_index():
            if not request.ready or entry.state == READY:
                reply.models.add(name=entry.name, version=entry.version, state=entry.state, reason=entry.reason)
        return reply.SerializeToString()

    async def _load(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = _parse(pb.RepositoryModelLoadRequest, data)
        name, version = _target(request)
        unsupported = sorted(key for key in request.parameters if key != VERSION_PARAMETER)
        if unsupported:
            raise InvalidInputError(f"load parameters {unsupported[:4]} are not supported: a node loads model "
                                    f"versions from its repository; only {VERSION_PARAMETER!r} may be given")
        await self.control.load(name, version)
        return pb.RepositoryModelLoadResponse().SerializeToString()

    async def _unload(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name, version = _target(_parse(pb.RepositoryModelUnloadRequest, data))
        await self.control.unload(name, version)  # NOTE: "unload_dependents" means nothing here: no ensembles
        return pb.RepositoryModelUnloadResponse().SerializeToString()


def _target(request: Any) -> tuple[str, str | None]:
    """The model and version (None: not given) a load or unload request names."""
    if not request.model_name:
        raise InvalidInputError("model_name is required")
    param = request.parameters.get(VERSION_PARAMETER)
    if param is None:
        return request.model_name, None
    kind = param.WhichOneof("parameter_choice")
    if kind == "int64_param":
        return request.model_name, str(param.int64_param)
    if kind == "string_param" and param.string_param:
        return request.model_name, param.string_param
    raise InvalidInputError(f"parameter {VERSION_PARAMETER!r} must be a version number (string or int64)")


def repository_handler(control: RepositoryControl, *, token_file: Path | None,
                       certificates: bool) -> grpc.GenericRpcHandler:
    """The extension's handler for ``control``: admins by the token in ``token_file`` and, with
    ``certificates`` (the node requires client certificates), by admin certificates."""
    token = TokenFile(token_file) if token_file is not None else None
    return RepositoryServicer(control, RepositoryAuth(token, certificates=certificates)).handler()
