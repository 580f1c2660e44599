"""The core's seam for tracing: it names the spans of its work, an adapter records them, or nothing does.

The core never imports a tracing library. Each component takes a :class:`Spans` (default
:data:`PROCESS_SPANS`, which forwards to what the process installed at start: nothing, until
``fogline.adapters.tracing`` installs OpenTelemetry). On the hot path a component asks
``spans.enabled`` first, so that with tracing off a request costs one attribute read::

    if self._spans.enabled:
        return await in_span(self._spans, "fogline.route", self._route(...), {"fogline.model": model},
                             describe=lambda routed: {"fogline.route": routed.route})

Work done on behalf of many requests at once (a batch) is recorded afterwards, once per request,
under the context each request had when it was queued: :meth:`Spans.current` captures it,
:meth:`Spans.record` writes a finished span under it with explicit times (:meth:`Spans.now_ns`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import Literal, Protocol, TypeVar

T = TypeVar("T")

SpanKind = Literal["internal", "server", "client"]
INTERNAL: SpanKind = "internal"
SERVER: SpanKind = "server"
"""A span of serving a call that came from another process."""
CLIENT: SpanKind = "client"
"""A span of one call to another process (an attempt at an endpoint)."""

AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue]

ATTR_CODE = "fogline.code"
"""The outcome of the spanned work: ``OK`` or a ``fogline.errors.ErrorCode`` value."""


class Span(Protocol):
    """One span being recorded. A span whose block raises is marked failed with the error's code
    (``fogline.errors.FoglineError``; INTERNAL for another exception, CANCELLED when cancelled)."""

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Add ``key`` = ``value`` to the span."""

    def set_error(self, code: str, message: str) -> None:
        """Mark the span failed with the error ``code`` (an ErrorCode value) and ``message``."""

    @property
    def trace_id(self) -> str:
        """The span's trace id as 32 hex digits; "" when nothing is recorded."""


class Spans(Protocol):
    """Where spans go. ``enabled`` False: every method does nothing, and callers may skip their work."""

    enabled: bool

    def span(self, name: str, attributes: Attributes | None = None, *, kind: SpanKind = INTERNAL,
             parent: object | None = None) -> AbstractContextManager[Span]:
        """A span around the block, current within it; under ``parent`` (a context from :meth:`current`
        or a tracing adapter) if given, else under the current span."""

    def current(self) -> object | None:
        """The current context, to record spans under later (:meth:`record`); None when no span is
        recorded in it (nothing to record under)."""

    def record(self, name: str, parent: object | None, start_ns: int, end_ns: int,
               attributes: Attributes | None = None, *, error: tuple[str, str] | None = None) -> None:
        """A finished span from ``start_ns`` to ``end_ns`` (:meth:`now_ns`) under ``parent``; ``error``:
        its (code, message) if the work failed."""

    def now_ns(self) -> int:
        """The clock of span times: nanoseconds since the epoch."""

    def close(self) -> None:
        """Send what is recorded and stop; spans after this are dropped."""


def succeeded(span: Span, attributes: Attributes | None = None) -> None:
    """Mark ``span`` successful (``fogline.code`` OK), with ``attributes`` added."""
    for key, value in (attributes or {}).items():
        span.set_attribute(key, value)
    span.set_attribute(ATTR_CODE, "OK")


async def in_span(spans: Spans, name: str, work: Awaitable[T], attributes: Attributes | None = None, *,
                  describe: Callable[[T], Attributes] | None = None, kind: SpanKind = INTERNAL,
                  parent: object | None = None) -> T:
    """Await ``work`` in a span ``name``: marked successful with what ``describe`` says of its result, or
    failed with the error it raised (:class:`Span`). ``work`` must not have started: it runs in the span."""
    with spans.span(name, attributes, kind=kind, parent=parent) as span:
        result = await work
        succeeded(span, describe(result) if describe is not None else None)
        return result


class _NoSpan:
    """A span that records nothing; its own context manager, so that no span costs an allocation."""

    trace_id = ""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def set_error(self, code: str, message: str) -> None:
        return None


NO_SPAN = _NoSpan()


class NoSpans:
    """Records nothing: tracing off."""

    enabled = False

    def span(self, name: str, attributes: Attributes | None = None, *, kind: SpanKind = INTERNAL,
             parent: object | None = None) -> _NoSpan:
        return NO_SPAN

    def current(self) -> object | None:
        return None

    def record(self, name: str, parent: object | None, start_ns: int, end_ns: int,
               attributes: Attributes | None = None, *, error: tuple[str, str] | None = None) -> None:
        return None

    def now_ns(self) -> int:
        return time.time_ns()

    def close(self) -> None:
        return None


NO_SPANS = NoSpans()


class ProcessSpans:
    """Forwards to the :class:`Spans` the process installed (:meth:`install`); :class:`NoSpans` until then.

    Components built before the process sets up tracing (a master is built, then run) hold this and
    see the installed one from then on. ``enabled`` is a plain attribute, copied at install."""

    def __init__(self) -> None:
        self._installed: Spans = NO_SPANS
        self.enabled = False

    def install(self, spans: Spans) -> Spans:
        """Make ``spans`` the process's from now on; the one it replaces (to restore it, in tests)."""
        previous, self._installed = self._installed, spans
        self.enabled = spans.enabled
        return previous

    @property
    def installed(self) -> Spans:
        """The process's spans."""
        return self._installed

    def span(self, name: str, attributes: Attributes | None = None, *, kind: SpanKind = INTERNAL,
             parent: object | None = None) -> AbstractContextManager[Span]:
        return self._installed.span(name, attributes, kind=kind, parent=parent)

    def current(self) -> object | None:
        return self._installed.current()

    def record(self, name: str, parent: object | None, start_ns: int, end_ns: int,
               attributes: Attributes | None = None, *, error: tuple[str, str] | None = None) -> None:
        self._installed.record(name, parent, start_ns, end_ns, attributes, error=error)

    def now_ns(self) -> int:
        return self._installed.now_ns()

    def close(self) -> None:
        self._installed.close()


PROCESS_SPANS = ProcessSpans()
"""The process's spans: what components use unless given their own."""
