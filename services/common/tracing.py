"""OpenTelemetry tracing: one trace per turn across the gateway and its stages, exported over OTLP/gRPC.

Off unless ``<PREFIX>_OTLP_ENDPOINT`` is set (``ServiceSettings.otlp_endpoint``). Off, no OpenTelemetry module is
imported (the chat service's vLLM environment, or an image without the packages, works as before) and every hook
below returns at once.

On, each process has its own tracer provider (the global one is left alone: vLLM has its own tracing):
- the shared server interceptor (``server.py``) starts a SERVER span for every RPC, a child of the W3C
  ``traceparent`` the caller sent in the gRPC metadata, and makes it the current span of the RPC's task;
- the gateway wraps each stage call in a CLIENT span (``client_call``) and sends its ``traceparent`` along;
- the gateway marks the turn (``span("turn")``) with "first token" and "first audio" events.
Sampling is decided where a trace starts (the gateway, ``trace_sample_ratio``); the stages follow the flag in
``traceparent``. Spans leave in batches from a background thread; ``shutdown`` flushes them.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import grpc

from services.common.errors import DomainError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from services.common.settings import ServiceSettings

Metadata = tuple[tuple[str, str], ...]

# Codes that are the server's fault (OpenTelemetry's gRPC conventions): a server span that ends with one is an error.
# A client span is an error for any code but OK and CANCELLED (the gateway stopping a call it no longer needs).
_SERVER_FAULTS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
_CLIENT_FAULTS = set(grpc.StatusCode) - {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED}


class _Tracing:
    """What the hooks use once tracing is on; the only place that imports OpenTelemetry."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("stepaudio.services")
        self.context = context
        self.trace = trace
        self.kind = SpanKind
        self.status = Status
        self.error = StatusCode.ERROR
        self.propagator = TraceContextTextMapPropagator()

    def end(self, span: Span, code: grpc.StatusCode, error: BaseException | None, faults: set[grpc.StatusCode]) -> None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if isinstance(error, Exception) and not isinstance(error, DomainError | grpc.aio.AbortError):
            span.record_exception(error)  # an unexpected error (INTERNAL): its traceback helps
        if code in faults:
            span.set_status(self.status(self.error, _message(error) or code.name))
        span.end()


_active: _Tracing | None = None
FLUSH_SECONDS = 3.0  # what shutdown waits for the last spans to leave


def configure(service: str, settings: ServiceSettings) -> bool:
    """Turn tracing on for this process when ``settings.otlp_endpoint`` is set; True if it is on."""
    if not settings.otlp_endpoint:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as error:
        raise RuntimeError(
            f"OTLP_ENDPOINT is set ({settings.otlp_endpoint}) but the OpenTelemetry SDK is not installed: "
            f"install opentelemetry-sdk and opentelemetry-exporter-otlp-proto-grpc (requirements/common.txt), "
            f"or unset it ({error})"
        ) from error
    # OTEL_RESOURCE_ATTRIBUTES (pod name, namespace...) are merged in; OTEL_EXPORTER_OTLP_* (headers, certificates,
    # timeout) and OTEL_BSP_* (batching) apply as the SDK documents them.
    resource = Resource.create({"service.name": settings.trace_service_name or f"stepaudio-{service}"})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    install(provider)
    return True


def install(provider: TracerProvider) -> None:
    """Trace with ``provider`` from now on (``configure``; tests pass one with an in-memory exporter)."""
    global _active
    _active = _Tracing(provider)


def uninstall() -> None:
    """Tracing off again (tests)."""
    global _active
    _active = None


async def shutdown(limit: float = FLUSH_SECONDS) -> None:
    """Export the spans still buffered and stop, waiting at most ``limit`` seconds: a collector that is down must not
    hold up the process's exit (the SDK would retry for up to 30 s). The export runs in a daemon thread, off the
    event loop, and is abandoned at exit if it is still trying."""
    global _active
    tracing, _active = _active, None
    if tracing is None:
        return
    loop, done = asyncio.get_running_loop(), asyncio.Event()

    def flush() -> None:
        try:
            tracing.provider.shutdown()
        finally:
            with suppress(RuntimeError):  # the loop is gone: shutdown gave up on this flush
                loop.call_soon_threadsafe(done.set)

    threading.Thread(target=flush, name="trace-flush", daemon=True).start()
    with suppress(TimeoutError):
        async with asyncio.timeout(limit):
            await done.wait()


def server_span(full_method: str, metadata: Mapping[str, Any], request_id: str) -> Span | None:
    """Start the SERVER span of an RPC (``full_method``: /package.Service/Method), child of the caller's
    ``traceparent`` if it sent one, and make it current for the rest of the RPC's task: the calls the handler makes
    are its children. The context is not restored afterwards: each RPC is its own asyncio task (as the request id
    of ``logs.request_id_var``). None when tracing is off."""
    tracing = _active
    if tracing is None:
        return None
    service, _, method = full_method.lstrip("/").rpartition("/")
    started = tracing.tracer.start_span(
        full_method.lstrip("/"),
        context=tracing.propagator.extract(metadata),
        kind=tracing.kind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method, "request_id": request_id},
    )
    tracing.context.attach(tracing.trace.set_span_in_context(started))
    return started


def end_server_span(span: Span | None, code: grpc.StatusCode, error: BaseException | None) -> None:
    tracing = _active
    if span is not None and tracing is not None:
        tracing.end(span, code, error, _SERVER_FAULTS)


class ClientCall:
    """A stage call as the gateway makes it (``client_call``): ``metadata`` adds the call's ``traceparent``."""

    def __init__(self, span: Span | None = None, headers: Metadata = ()) -> None:
        self.span = span
        self._headers = headers

    def metadata(self, metadata: Metadata) -> Metadata:
        return (*metadata, *self._headers) if self._headers else metadata


_OFF = ClientCall()


@contextmanager
def client_call(full_method: str, address: str) -> Iterator[ClientCall]:
    """A CLIENT span, child of the current span, around one outgoing call to ``full_method``
    (package.Service/Method) at ``address``. The call's status code is read from the exception that ends the block:
    a gRPC error, or a domain error (``errors.py``) that the caller made of one."""
    tracing = _active
    if tracing is None:
        yield _OFF
        return
    service, _, method = full_method.rpartition("/")
    started = tracing.tracer.start_span(
        full_method,
        kind=tracing.kind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method, "server.address": address},
    )
    carrier: dict[str, str] = {}
    tracing.propagator.inject(carrier, context=tracing.trace.set_span_in_context(started))
    error: BaseException | None = None
    try:
        yield ClientCall(started, tuple(carrier.items()))
    except BaseException as raised:
        error = raised
        raise
    finally:
        tracing.end(started, _code_of(error), error, _CLIENT_FAULTS)


@contextmanager
def span(name: str) -> Iterator[Span | None]:
    """An INTERNAL span, child of the current span; not made current (pass ``context_with(span)`` to the tasks that
    should work inside it). Yields None when tracing is off. An exception records an error; a cancellation (or a
    generator closed early) a "cancelled" event."""
    tracing = _active
    if tracing is None:
        yield None
        return
    current = tracing.tracer.start_span(name)
    try:
        yield current
    except Exception as error:
        current.record_exception(error)
        current.set_status(tracing.status(tracing.error, _message(error)))
        raise
    except BaseException:
        current.add_event("cancelled")
        raise
    finally:
        current.end()


def context_with(span: Span | None) -> contextvars.Context | None:
    """A copy of the current context in which ``span`` is the current span (for ``asyncio.create_task(...,
    context=...)``); None when tracing is off (create_task then copies the current context, as usual)."""
    tracing = _active
    if span is None or tracing is None:
        return None
    copy = contextvars.copy_context()
    copy.run(tracing.context.attach, tracing.trace.set_span_in_context(span))
    return copy


def add_event(span: Span | None, name: str, **attributes: float | int | str) -> None:
    if span is not None:
        span.add_event(name, attributes)


def _code_of(error: BaseException | None) -> grpc.StatusCode:
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, DomainError):
        return error.code
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code()
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _message(error: BaseException | None) -> str:
    if error is None:
        return ""
    return getattr(error, "message", None) or str(error) or type(error).__name__
