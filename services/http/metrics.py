"""Prometheus metrics of the HTTP service: requests by route and status, their latency, open WebSockets."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "stepaudio_http_requests_total",
    "HTTP requests answered, by method, route and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "stepaudio_http_request_duration_seconds",
    "Wall time of HTTP requests from arrival to the last byte of the response (streamed bodies included), by "
    "method, route and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
HTTP_IN_FLIGHT = Gauge("stepaudio_http_inflight", "HTTP requests being served now (streamed responses included).")
WEBSOCKETS_OPEN = Gauge("stepaudio_http_websockets_open", "WebSocket connections open now.")


def route_of(scope: Scope) -> str:
    """The route template that matched (``/v1/voices/{voice_id}``), so labels stay few; "unmatched" otherwise."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Counts every HTTP request and WebSocket by its route, timing responses to their last body chunk."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            HTTP_IN_FLIGHT.dec()
            labels = (scope["method"], route_of(scope), str(status))
            HTTP_REQUESTS.labels(*labels).inc()
            HTTP_SECONDS.labels(*labels).observe(time.perf_counter() - started)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        WEBSOCKETS_OPEN.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            WEBSOCKETS_OPEN.dec()
