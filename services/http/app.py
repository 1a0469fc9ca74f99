"""The ASGI application: the OpenAI-compatible API, the Realtime WebSocket and the web app, as a client of the
gateway (one gRPC channel per process), with health, readiness, metrics and OpenAI-shaped errors."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from stepaudio_client import GatewayClient

from services.http import chat_completions, openai_audio, realtime, voices, webapp
from services.http.errors import ApiError, api_error_from_grpc, error_body
from services.http.limits import BodyLimitMiddleware
from services.http.metrics import MetricsMiddleware
from services.http.settings import HttpSettings

log = logging.getLogger(__name__)


def create_app(settings: HttpSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.started_at = time.time()
        app.state.gateway = GatewayClient(settings.gateway_address, max_message_bytes=settings.max_grpc_message_bytes)
        # Readiness asks the gateway's grpc.health.v1 on a channel of its own, so a busy API channel cannot make
        # the service look down.
        health_channel = grpc.aio.insecure_channel(settings.gateway_address)
        app.state.gateway_health = health_pb2_grpc.HealthStub(health_channel)
        try:
            yield
        finally:
            await app.state.gateway.close()
            await health_channel.close()

    app = FastAPI(
        title="Step-Audio HTTP",
        summary="OpenAI-compatible speech, transcription and audio chat over the Step-Audio gateway.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    for module in (openai_audio, chat_completions, voices, realtime):
        app.include_router(module.router)
    app.include_router(webapp.router)  # last: it serves static files at "/"
    return app


async def healthz() -> dict:
    """The process is alive (it answers); says nothing about the gateway."""
    return {"status": "ok"}


async def readyz(request: Request) -> JSONResponse:
    """200 when the gateway answers grpc.health.v1 SERVING, else 503."""
    settings: HttpSettings = request.app.state.settings
    try:
        response = await request.app.state.gateway_health.Check(
            health_pb2.HealthCheckRequest(), timeout=settings.ready_timeout_seconds
        )
    except grpc.aio.AioRpcError as err:
        return JSONResponse({"status": "unavailable", "gateway": err.code().name}, status_code=503)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        return JSONResponse({"status": "unavailable", "gateway": status}, status_code=503)
    return JSONResponse({"status": "ready", "gateway": status})


async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape: ours, the gateway's, FastAPI's validation (400, not 422) and any other."""

    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(error), status_code=error.status_code)

    async def on_grpc_error(request: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
        return await on_api_error(request, api_error_from_grpc(error))

    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return await on_api_error(request, api_error_from_validation(error))

    async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        api_error = ApiError(error.status_code, str(error.detail), code=_HTTP_ERROR_CODES.get(error.status_code))
        return JSONResponse(error_body(api_error), status_code=error.status_code, headers=error.headers)

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return await on_api_error(request, ApiError(500, "internal error; see the HTTP service's log"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(grpc.aio.AioRpcError, on_grpc_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def api_error_from_validation(error: RequestValidationError) -> ApiError:
    """A 400 naming the first offending field, as OpenAI's ``param`` does (``messages.0.content``)."""
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return ApiError(400, f"the request body is not valid JSON: {detail}".rstrip(": "), code="invalid_json")
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return ApiError(400, message, param=param)
