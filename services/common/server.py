"""The gRPC server every service runs: interceptor (request id, error mapping, metrics, logs),
health, reflection, Prometheus endpoint and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.common.errors import status_for
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


class _RpcScope:
    """Per-call bookkeeping shared by the four handler shapes (an async context manager around
    the handler): request id, in-flight gauge, status mapping, counters, duration."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.method = method
        self.context = context
        incoming = dict(context.invocation_metadata() or ())
        self.request_id = incoming.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK

    async def __aenter__(self) -> _RpcScope:
        RPC_IN_FLIGHT.labels(self.method).inc()
        request_id_var.set(self.request_id)
        try:
            await self.context.send_initial_metadata(((REQUEST_ID_HEADER, self.request_id),))
        except BaseException:
            self._end()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> bool:
        try:
            if isinstance(error, asyncio.CancelledError):
                self.code = grpc.StatusCode.CANCELLED
            elif isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
                await self._fail(error)  # aborts the RPC with the mapped status (raises AbortError)
        finally:
            self._end()
        return False

    async def _fail(self, error: Exception) -> None:
        code, message = status_for(error)
        self.code = code
        if code == grpc.StatusCode.INTERNAL:
            log.error("rpc failed", extra={"method": self.method}, exc_info=error)
        else:
            log.info("rpc rejected", extra={"method": self.method, "code": code.name, "detail": message})
        await self.context.abort(code, message)

    def _end(self) -> None:
        code = self.context.code()
        if isinstance(code, grpc.StatusCode) and self.code == grpc.StatusCode.OK:
            self.code = code
        RPC_IN_FLIGHT.labels(self.method).dec()
        RPC_HANDLED.labels(self.method, self.code.name).inc()
        RPC_SECONDS.labels(self.method).observe(time.perf_counter() - self.started)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """The one place where domain errors become status codes, and where request ids, RPC
    metrics and access logs are handled, for every handler shape."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(("/grpc.health", "/grpc.reflection")):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                _streaming(handler.stream_stream, method), handler.request_deserializer, handler.response_serializer
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, method), handler.request_deserializer, handler.response_serializer
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, method), handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary, method), handler.request_deserializer, handler.response_serializer
        )


def _unary(behaviour: Callable, method: str) -> Callable:
    async def wrapped(request: object, context: grpc.aio.ServicerContext) -> object:
        async with _RpcScope(method, context):
            return await behaviour(request, context)

    return wrapped


def _streaming(behaviour: Callable, method: str) -> Callable:
    async def wrapped(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        async with _RpcScope(method, context):
            async for response in behaviour(request, context):
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
    health_servicer: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)


def build_server(definition: ServiceDefinition) -> tuple[grpc.aio.Server, int]:
    """Create the aio server with interceptor, limits, health and reflection; bind its port."""
    settings = definition.settings
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor()],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
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


async def serve(definition: ServiceDefinition) -> None:
    """Run the service until SIGTERM/SIGINT, then shut down gracefully:
    health NOT_SERVING → stop accepting and drain in-flight RPCs (grace period) → engine close."""
    settings = definition.settings
    metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    metrics_port = metrics_server.server_port
    server, port = build_server(definition)
    await server.start()
    await set_serving(definition, True)
    if settings.port_file:
        await asyncio.to_thread(Path(settings.port_file).write_text, f"{port} {metrics_port}\n")
    log.info("serving", extra={"grpc_port": port, "metrics_port": metrics_port, "service": definition.name})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await definition.health_servicer.enter_graceful_shutdown()
    await server.stop(settings.shutdown_grace_seconds)
    if definition.on_shutdown is not None:
        await definition.on_shutdown()
    metrics_server.shutdown()
    log.info("stopped")


def run_service(build: Callable[[Sequence[str] | None], Awaitable[ServiceDefinition]], argv: Sequence[str]) -> None:
    """Entry point helper for ``python -m services.<name>``."""

    async def main() -> None:
        definition = await build(argv)
        await serve(definition)

    asyncio.run(main())


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
    )
