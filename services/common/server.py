"""The gRPC server every service runs: interceptor (request id, error mapping, metrics, logs),
health, reflection, Prometheus endpoint and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.common import tracing
from services.common.errors import InvalidArgument, status_for
from services.common.health_monitor import HealthMonitor, HealthPolicy, watch_loop_lag
from services.common.logs import configure_logging, request_id_var
from services.common.settings import ServiceSettings

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"

RPC_HANDLED = Counter("stepaudio_rpc_handled_total", "RPCs finished, by method and status code.", ["method", "code"])
RPC_IN_FLIGHT = Gauge("stepaudio_rpc_inflight", "RPCs being served now, by method (autoscaling signal).", ["method"])
RPC_SECONDS = Histogram(
    "stepaudio_rpc_duration_seconds",
    "Wall time of RPCs from arrival to the last message, by method.",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


# Status details travel in a trailer, where grpc percent-encodes every byte outside printable ASCII (×3); a trailer
# over the client's metadata limits (8 KiB soft, 16 KiB hard by default) reaches it as RESOURCE_EXHAUSTED "received
# metadata size exceeds …" instead of the status sent.
MAX_STATUS_DETAIL_BYTES = 2000


def bounded_details(message: str) -> str:
    """``message`` cut to at most MAX_STATUS_DETAIL_BYTES of UTF-8 (messages may echo what a caller sent)."""
    encoded = message.encode("utf-8")
    if len(encoded) <= MAX_STATUS_DETAIL_BYTES:
        return message
    return encoded[: MAX_STATUS_DETAIL_BYTES - 20].decode("utf-8", "ignore") + "… (truncated)"


class _RpcScope:
    """Per-call bookkeeping shared by the four handler shapes (an async context manager around
    the handler): request id, in-flight gauge, status mapping, counters, duration, trace span."""

    def __init__(self, full_method: str, context: grpc.aio.ServicerContext) -> None:
        self.full_method = full_method  # /package.Service/Method
        self.method = full_method.rsplit("/", 1)[-1]
        self.context = context
        self.incoming = dict(context.invocation_metadata() or ())
        self.request_id = self.incoming.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        # Why a request message could not be decoded, once one could not: the call then ends INVALID_ARGUMENT
        # whatever the handler made of it (the gateway, for one, forwards its request stream to a stage, where
        # grpc swallows the error and cancels that call).
        self.undecodable: str | None = None
        self.span = None  # the RPC's trace span (tracing.py), when tracing is on
        self.error: BaseException | None = None

    async def __aenter__(self) -> _RpcScope:
        RPC_IN_FLIGHT.labels(self.method).inc()
        request_id_var.set(self.request_id)
        self.span = tracing.server_span(self.full_method, self.incoming, self.request_id)
        try:
            await self.context.send_initial_metadata(((REQUEST_ID_HEADER, self.request_id),))
        except BaseException:
            self._end()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> bool:
        self.error = error
        try:
            if isinstance(error, asyncio.CancelledError):
                self.code = grpc.StatusCode.CANCELLED
            elif isinstance(error, grpc.aio.AbortError):
                pass
            elif self.undecodable is not None:
                await self._abort(grpc.StatusCode.INVALID_ARGUMENT, self.undecodable)
            elif isinstance(error, Exception):
                await self._abort(*status_for(error), error)
        finally:
            self._end()
        return False

    async def _abort(self, code: grpc.StatusCode, message: str, error: BaseException | None = None) -> None:
        self.code = code
        if code == grpc.StatusCode.INTERNAL:
            log.error("rpc failed", extra={"method": self.method}, exc_info=error)
        else:
            log.info("rpc rejected", extra={"method": self.method, "code": code.name, "detail": message})
        await self.context.abort(code, bounded_details(message))  # raises AbortError

    def _end(self) -> None:
        code = self.context.code()
        if isinstance(code, grpc.StatusCode) and self.code == grpc.StatusCode.OK:
            self.code = code
        RPC_IN_FLIGHT.labels(self.method).dec()
        RPC_HANDLED.labels(self.method, self.code.name).inc()
        RPC_SECONDS.labels(self.method).observe(time.perf_counter() - self.started)
        tracing.end_server_span(self.span, self.code, self.error)


class _RequestDecoder:
    """Deserialises request messages inside the RPC scope. Left to grpc, a message that does not parse (malformed
    protobuf, invalid UTF-8 in a string field) would be answered UNKNOWN with an exception's class name."""

    def __init__(self, deserialize: Callable[[bytes], object] | None) -> None:
        self._deserialize = deserialize
        descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
        self.type_name = descriptor.full_name if descriptor is not None else "the request message"

    def one(self, raw: bytes, scope: _RpcScope, what: str = "request") -> object:
        if self._deserialize is None:
            return raw
        try:
            return self._deserialize(raw)
        except Exception:
            scope.undecodable = (
                f"{what} could not be decoded as {self.type_name}: it is not a valid protobuf encoding of that "
                "message (truncated or corrupt bytes, or a string field that is not UTF-8); build requests with "
                "stubs generated from the stepaudio protos"
            )
            raise InvalidArgument(scope.undecodable) from None

    def stream(self, raw: AsyncIterator[bytes], scope: _RpcScope) -> AsyncIterator[object]:
        return _DecodedStream(raw, self, scope)


class _DecodedStream:
    """A request stream whose messages are decoded as they are read (see ``_RequestDecoder``)."""

    def __init__(self, raw: AsyncIterator[bytes], decoder: _RequestDecoder, scope: _RpcScope) -> None:
        self._raw = aiter(raw)
        self._decoder = decoder
        self._scope = scope
        self._index = 0

    def __aiter__(self) -> _DecodedStream:
        return self

    async def __anext__(self) -> object:
        raw = await anext(self._raw)
        self._index += 1
        return self._decoder.one(raw, self._scope, f"request message {self._index} of the stream")


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """The one place where domain errors become status codes, and where request ids, RPC
    metrics, trace spans and access logs are handled, for every handler shape. Requests reach it undecoded
    (see ``_RequestDecoder``); health and reflection pass through untouched."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(("/grpc.health", "/grpc.reflection")):
            return handler
        method = details.method  # /package.Service/Method
        decoder = _RequestDecoder(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                _streaming(handler.stream_stream, method, decoder.stream), None, serialize
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, method, decoder.one), None, serialize
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, method, decoder.stream), None, serialize
            )
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, method, decoder.one), None, serialize)


Decode = Callable[[object, _RpcScope], object]


def _unary(behaviour: Callable, method: str, decode: Decode) -> Callable:
    async def wrapped(raw: object, context: grpc.aio.ServicerContext) -> object:
        async with _RpcScope(method, context) as scope:
            return await behaviour(decode(raw, scope), context)

    return wrapped


def _streaming(behaviour: Callable, method: str, decode: Decode) -> Callable:
    async def wrapped(raw: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        async with _RpcScope(method, context) as scope:
            async for response in behaviour(decode(raw, scope), context):
                yield response

    return wrapped


Registrar = Callable[[grpc.aio.Server], None]


@dataclass
class ServiceDefinition:
    """What a service's composition root hands to ``serve``."""

    name: str
    settings: ServiceSettings
    register: Registrar
    service_names: Sequence[str]
    on_shutdown: Callable[[], Awaitable[None]] | None = None
    # The engine's liveness check (``check_health`` of the engine interfaces); None: health follows only start-up
    # and shutdown (the gateway, which has no engine of its own).
    health_check: Callable[[], Awaitable[None]] | None = None
    health_servicer: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)


def connection_age_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    """gRPC's max_connection_age: long-lived HTTP/2 connections (the gateway's to each stage, clients' to the
    gateway) would otherwise stay on the pods they first reached, and a replica added by an autoscaler would get
    no calls until clients reconnect for another reason. An aged connection gets GOAWAY; the client opens a new one
    (re-resolving DNS) for its next calls while the calls in flight finish on the old one."""
    if settings.max_connection_age_seconds <= 0:
        return []
    options = [("grpc.max_connection_age_ms", round(settings.max_connection_age_seconds * 1000))]
    if settings.max_connection_age_grace_seconds > 0:
        options.append(("grpc.max_connection_age_grace_ms", round(settings.max_connection_age_grace_seconds * 1000)))
    return options


def build_server(definition: ServiceDefinition) -> tuple[grpc.aio.Server, int]:
    """Create the aio server with interceptor, limits, health and reflection; bind its port."""
    settings = definition.settings
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor()],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # Let clients (the gateway) ping every 10 s on a busy connection, so a peer that vanished without
            # closing it is noticed in seconds; gRPC's default refuses pings more often than every 5 minutes.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            *connection_age_options(settings),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    definition.register(server)
    health_pb2_grpc.add_HealthServicer_to_server(definition.health_servicer, server)
    reflection.enable_server_reflection(
        [
            *definition.service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise RuntimeError(f"could not bind {settings.host}:{settings.port}")
    return server, port


async def set_serving(definition: ServiceDefinition, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *definition.service_names):
        await definition.health_servicer.set(name, status)


async def serve(definition: ServiceDefinition) -> int:
    """Run the service until SIGTERM/SIGINT, or until the health monitor finds the engine beyond repair, then
    shut down gracefully: health NOT_SERVING → stop accepting and drain in-flight RPCs (grace period) → engine
    close. Returns the process exit code: 0 after a signal, 1 after an engine failure."""
    settings = definition.settings
    tracing.configure(definition.name, settings)
    metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    metrics_port = metrics_server.server_port
    server, port = build_server(definition)
    await server.start()
    await set_serving(definition, True)
    if settings.port_file:
        await asyncio.to_thread(Path(settings.port_file).write_text, f"{port} {metrics_port}\n")
    log.info("serving", extra={"grpc_port": port, "metrics_port": metrics_port, "service": definition.name})

    stop = asyncio.Event()
    exit_code = 0

    def engine_failed(reason: str) -> None:
        nonlocal exit_code
        log.critical("engine cannot recover: stopping so that the service is restarted", extra={"detail": reason})
        exit_code = 1
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchers = [asyncio.create_task(watch_loop_lag())]
    if definition.health_check is not None:
        monitor = HealthMonitor(
            definition.health_check,
            lambda serving: set_serving(definition, serving),
            engine_failed,
            HealthPolicy(
                settings.health_check_interval_seconds,
                settings.health_check_timeout_seconds,
                settings.unhealthy_exit_seconds,
            ),
        )
        watchers.append(asyncio.create_task(monitor.run()))
    await stop.wait()
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)

    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await definition.health_servicer.enter_graceful_shutdown()
    await server.stop(settings.shutdown_grace_seconds)
    if definition.on_shutdown is not None:
        await definition.on_shutdown()
    await tracing.shutdown()
    metrics_server.shutdown()
    log.info("stopped", extra={"exit_code": exit_code})
    return exit_code


def run_service(build: Callable[[Sequence[str] | None], Awaitable[ServiceDefinition]], argv: Sequence[str]) -> None:
    """Entry point helper for ``python -m services.<name>``."""

    async def main() -> int:
        definition = await build(argv)
        return await serve(definition)

    sys.exit(asyncio.run(main()))


async def compose_stage(
    name: str,
    settings: ServiceSettings,
    create_engine: Callable[[ServiceSettings], object],
    make_servicer: Callable[[object], object],
    add_to_server: Callable[[object, grpc.aio.Server], None],
    service_name: str,
) -> ServiceDefinition:
    """The shared shape of a stage's composition root: settings → engine (loaded off the
    event loop) → servicer → server definition whose shutdown closes the engine."""
    configure_logging(name, settings.log_level)
    engine = await asyncio.to_thread(create_engine, settings)
    servicer = make_servicer(engine)
    return ServiceDefinition(
        name=name,
        settings=settings,
        register=lambda server: add_to_server(servicer, server),
        service_names=[service_name],
        on_shutdown=engine.close,  # type: ignore[attr-defined]
        health_check=engine.check_health,  # type: ignore[attr-defined]
    )
