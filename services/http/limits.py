"""The request-body limit: a body over ``max_upload_bytes`` gets 413 before it is read in full."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http.errors import ApiError, error_body


def too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes (HTTP_MAX_UPLOAD_BYTES)"


class BodyLimitMiddleware:
    """Refuses a declared ``Content-Length`` over the limit at once, and stops reading a chunked body at the limit
    (the endpoint then fails with 413 through the app's error handlers)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            error = ApiError(413, too_large(self.max_body_bytes), code="request_too_large")
            await JSONResponse(error_body(error), status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, too_large(self.max_body_bytes))
            return message

        await self.app(scope, counted_receive, send)
