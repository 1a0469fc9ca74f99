"""Reading request bodies and writing server-sent events, with OpenAI-shaped errors for what is wrong."""

from __future__ import annotations

import email.message
import json

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from services.http.errors import ApiError, invalid_request


def _media_type(request: Request) -> str:
    message = email.message.Message()
    message["content-type"] = request.headers.get("content-type", "")
    return message.get_content_type() if request.headers.get("content-type") else ""


def expect_json(request: Request) -> None:
    """Route dependency: a body that is not ``application/json`` gets 415 naming what was sent."""
    media_type = _media_type(request)
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(
            415,
            f"Content-Type must be application/json, not {media_type or 'missing'}",
            code="unsupported_media_type",
        )


async def read_form(request: Request) -> FormData:
    """The multipart form of ``request``; 415 for another content type."""
    media_type = _media_type(request)
    if media_type != "multipart/form-data":
        raise ApiError(
            415,
            f"Content-Type must be multipart/form-data (a file upload), not {media_type or 'missing'}",
            code="unsupported_media_type",
        )
    return await request.form(max_files=2, max_fields=32)


async def read_file_field(form: FormData, name: str) -> bytes:
    """The bytes of the uploaded file ``name``; 400 when it is missing, not a file, or empty."""
    upload = form.get(name)
    if upload is None:
        raise invalid_request(f"{name}: a file is required (a multipart file field named {name!r})", param=name)
    if not isinstance(upload, UploadFile):
        raise invalid_request(f"{name} must be a file upload, not a text field", param=name)
    data = await upload.read()
    if not data:
        raise invalid_request(f"{name} is empty", param=name)
    return data


def form_text(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name, default)
    if not isinstance(value, str):
        raise invalid_request(f"{name} must be a text field, not a file", param=name)
    return value.strip()


def form_flag(form: FormData, name: str) -> bool:
    value = form_text(form, name, "false").lower()
    if value not in ("true", "false", "1", "0", ""):
        raise invalid_request(f"{name} must be true or false, not {value[:20]!r}", param=name)
    return value in ("true", "1")


def sse(data: dict | str) -> bytes:
    """One server-sent event: a ``data:`` line of JSON (or a literal such as ``[DONE]``)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
