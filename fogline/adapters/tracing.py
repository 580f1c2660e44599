"""OpenTelemetry tracing: the :class:`~fogline.core.observe.spans.Spans` of the core, recorded by the
OpenTelemetry SDK, and W3C trace context carried across every hop.

Configured by the standard variables, read by the OpenTelemetry SDK itself (``OTEL_SERVICE_NAME``,
``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_BSP_*``, ...). Tracing is on only
when an exporter is configured (:func:`configured`): then :func:`setup` builds a tracer provider
exporting in batches, and a process installs it once (``fogline.servers.process``). Off, nothing
is installed, and the hot path reads one flag (``PROCESS_SPANS.enabled``).

The context travels as ``traceparent``/``tracestate``:

- on a unary call, in its gRPC metadata (:func:`outgoing_metadata`, :func:`from_metadata`);
- on a ModelStreamInfer stream, which carries many requests (an edge master's to a device node), in
  each request as V2 string parameters of those names, appended to its bytes
  (:func:`outgoing_parameters`; ``fogline.adapters.grpc.wire.string_parameters``) and read back
  with :func:`from_parameters`. A hop appends its own: the last one wins.

A server takes a unary call's context from its metadata, else from the request's parameters; a
stream request's from its parameters, else from the stream's metadata.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from fogline._version import __version__
from fogline.adapters.grpc import wire
from fogline.adapters.grpc.status import as_fogline_error
from fogline.core.observe.spans import (
    ATTR_CODE,
    CLIENT,
    INTERNAL,
    PROCESS_SPANS,
    SERVER,
    Attributes,
    AttributeValue,
    SpanKind,
)
from fogline.core.routing.attempt import RetryElsewhere

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACER_NAME = "fogline"
CLOSE_TIMEOUT_S = 3.0
"""The longest :meth:`OtelSpans.close` waits for the last spans to be exported."""

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
EXPORTER_VARIABLE = "OTEL_TRACES_EXPORTER"
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")

_PROPAGATOR = TraceContextTextMapPropagator()
_KINDS = {INTERNAL: trace.SpanKind.INTERNAL, SERVER: trace.SpanKind.SERVER, CLIENT: trace.SpanKind.CLIENT}


class TracingError(ValueError):
    """The ``OTEL_*`` variables ask for something this installation cannot do."""


class _Scope:
    """An OpenTelemetry span as the core's ``Span``, and its own context manager (current within)."""

    __slots__ = ("_manager", "_span")

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._span: trace.Span = trace.INVALID_SPAN

    def __enter__(self) -> _Scope:
        self._span = self._manager.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        if exc is not None:
            self._failed(exc)
        result: bool | None = self._manager.__exit__(kind, exc, tb)
        return result

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self._span.set_attribute(ATTR_CODE, "CANCELLED")
            return
        if isinstance(exc, RetryElsewhere):
            exc = exc.error
        err = as_fogline_error(exc)
        self.set_error(err.code.value, err.message)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def set_error(self, code: str, message: str) -> None:
        self._span.set_attribute(ATTR_CODE, code)
        self._span.set_status(Status(StatusCode.ERROR, message))

    @property
    def trace_id(self) -> str:
        context = self._span.get_span_context()
        return trace.format_trace_id(context.trace_id) if context.is_valid else ""


class OtelSpans:
    """The core's :class:`~fogline.core.observe.spans.Spans`, recorded by an OpenTelemetry tracer provider."""

    enabled = True

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(TRACER_NAME, __version__)

    def span(self, name: str, attributes: Attributes | None = None, *, kind: SpanKind = INTERNAL,
             parent: object | None = None) -> _Scope:
        return _Scope(self._tracer.start_as_current_span(
            name, context=parent, kind=_KINDS[kind], attributes=attributes,  # type: ignore[arg-type]
            record_exception=False, set_status_on_exception=False))

    def current(self) -> object | None:
        """The current context while a span is recorded in it (a sampled-out or absent one: None)."""
        context = otel_context.get_current()
        return context if trace.get_current_span(context).is_recording() else None

    def record(self, name: str, parent: object | None, start_ns: int, end_ns: int,
               attributes: Attributes | None = None, *, error: tuple[str, str] | None = None) -> None:
        span = self._tracer.start_span(name, context=parent, attributes=attributes,  # type: ignore[arg-type]
                                       start_time=start_ns)
        if error is not None:
            span.set_attribute(ATTR_CODE, error[0])
            span.set_status(Status(StatusCode.ERROR, error[1]))
        span.end(end_time=end_ns)

    def now_ns(self) -> int:
        return time.time_ns()

    def close(self) -> None:
        """Export what is left and stop, waiting at most :data:`CLOSE_TIMEOUT_S` (an unreachable collector
        must not hold a stopping process: its exporter retries for ``OTEL_EXPORTER_OTLP_TIMEOUT``)."""
        shutdown = getattr(self.provider, "shutdown", None)  # an API-only provider has none
        if shutdown is None:
            return
        stopping = threading.Thread(target=shutdown, name="tracing-shutdown", daemon=True)
        stopping.start()
        stopping.join(CLOSE_TIMEOUT_S)


# --- Configuration -------------------------------------------------------------------------------------


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces to be exported: an OTLP endpoint, or an exporter
    (other than ``none``), and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get(EXPORTER_VARIABLE, "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def setup(default_service_name: str, instance_id: str = "", *, environ: Mapping[str, str] = os.environ,
          sampler: Sampler | None = None, export: bool = True) -> OtelSpans:
    """A tracer provider for this process, as the ``OTEL_*`` variables say: resource ``service.name``
    (``OTEL_SERVICE_NAME``, else ``default_service_name``), ``service.instance.id`` (``instance_id``,
    else the pid), the sampler (``sampler``, else ``OTEL_TRACES_SAMPLER``: parent-based always-on by
    default) and, with ``export``, the exporters of ``OTEL_TRACES_EXPORTER`` (default ``otlp``) behind a
    batch processor (``OTEL_BSP_*``). TracingError for an exporter or protocol not installed."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, str | int] = {"service.instance.id": instance_id or str(os.getpid()),
                                        "service.version": __version__, "process.pid": os.getpid()}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = default_service_name
    provider = TracerProvider(sampler=sampler, resource=Resource.create(attributes), shutdown_on_exit=False)
    if export:
        for exporter in _exporters(environ):
            provider.add_span_processor(BatchSpanProcessor(exporter))
    return OtelSpans(provider)


def _exporters(environ: Mapping[str, str]) -> list[Any]:
    names = [n.strip().lower() for n in environ.get(EXPORTER_VARIABLE, "otlp").split(",") if n.strip()]
    return [_exporter(name, environ) for name in names if name != "none"]


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingError(f"{EXPORTER_VARIABLE}={name!r}: fogline exports traces with otlp or console")
    protocol = next((environ[v].strip() for v in PROTOCOL_VARIABLES if environ.get(v, "").strip()), "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
        except ImportError:
            raise TracingError("OTLP over http/protobuf needs the package opentelemetry-exporter-otlp-proto-http; "
                               "or set OTEL_EXPORTER_OTLP_PROTOCOL=grpc") from None
        return HttpExporter()
    raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: fogline exports OTLP over grpc or http/protobuf")


def start_process_tracing(default_service_name: str, instance_id: str = "",
                          environ: Mapping[str, str] = os.environ) -> OtelSpans | None:
    """Set up tracing for this process if the variables ask for it (:func:`configured`) and install it
    as the process's spans and OpenTelemetry's global tracer provider; None (tracing off) otherwise."""
    if not configured(environ):
        return None
    spans = setup(default_service_name, instance_id, environ=environ)
    PROCESS_SPANS.install(spans)
    trace.set_tracer_provider(spans.provider)
    log.info("tracing on: service %s, exporting with %s", default_service_name,
             environ.get(EXPORTER_VARIABLE) or "otlp")
    return spans


def client_spans() -> Any:
    """The spans an SDK client records: those of this process when it set tracing up, else OpenTelemetry's
    global tracer provider's when the application installed one, else none."""
    if PROCESS_SPANS.enabled:
        return PROCESS_SPANS
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return PROCESS_SPANS  # off: it follows the process should it set tracing up later
    return OtelSpans(provider)


# --- Propagation ---------------------------------------------------------------------------------------


def _carrier() -> dict[str, str]:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def outgoing_metadata(metadata: Iterable[tuple[str, str]] | None = None) -> tuple[tuple[str, str], ...] | None:
    """``metadata`` with the current trace context (``traceparent``, ``tracestate``) added; ``metadata``
    as it is when there is no current context."""
    carrier = _carrier()
    if not carrier:
        return tuple(metadata) if metadata is not None else None
    return (*(metadata or ()), *carrier.items())


def outgoing_parameters() -> bytes:
    """The current trace context as V2 request parameters, encoded to append to a request's bytes
    (b"" when there is no current context)."""
    carrier = _carrier()
    return wire.string_parameters(carrier) if carrier else b""


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> object | None:
    """The trace context of a call's gRPC metadata; None without a ``traceparent``."""
    carrier = {key: value for key, value in metadata or () if key in (TRACEPARENT, TRACESTATE)
               and isinstance(value, str)}
    return _PROPAGATOR.extract(carrier) if TRACEPARENT in carrier else None


def from_parameters(parameters: Mapping[str, Any]) -> object | None:
    """The trace context of a request's V2 parameters (``InferParameter`` map); None without a
    ``traceparent``."""
    if TRACEPARENT not in parameters:
        return None
    carrier = {TRACEPARENT: parameters[TRACEPARENT].string_param}
    if TRACESTATE in parameters:
        carrier[TRACESTATE] = parameters[TRACESTATE].string_param
    return _PROPAGATOR.extract(carrier)

