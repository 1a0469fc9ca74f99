"""Calls to the gateway on behalf of an HTTP caller: the metadata they carry, and streaming calls that start before
the response does and stop when the caller goes away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
from starlette.requests import HTTPConnection

T = TypeVar("T")

REQUEST_ID_HEADER = "x-request-id"


def grpc_metadata(request_or_websocket: HTTPConnection) -> tuple[tuple[str, str], ...]:
    """gRPC metadata for a gateway call made for this request: the caller's ``Authorization`` (the gateway's auth
    tokens, when its auth is on) and ``x-request-id`` (so the gateway's logs name the caller's id), if sent."""
    headers = request_or_websocket.headers
    metadata = []
    authorization = headers.get("authorization")
    if authorization and _is_metadata_value(authorization):
        metadata.append(("authorization", authorization))
    request_id = headers.get(REQUEST_ID_HEADER)
    if request_id and _is_metadata_value(request_id):
        metadata.append((REQUEST_ID_HEADER, request_id))
    return tuple(metadata)


def _is_metadata_value(value: str) -> bool:
    """gRPC refuses metadata values outside printable ASCII; such a header is dropped rather than failing the call."""
    return value.isascii() and value.isprintable()


async def started(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items`` with its first item already awaited, so a gateway error (an unknown voice, bad input) is raised
    here, before the HTTP response starts, and becomes its status; an error later can only cut the body short."""
    try:
        first = await anext(items)
    except StopAsyncIteration:
        return _chain((), items)
    except BaseException:
        await items.aclose()
        raise
    return _chain((first,), items)


async def _chain(head: tuple, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        for item in head:
            yield item
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


async def cancelling(call: grpc.aio.UnaryStreamCall) -> AsyncIterator:
    """The messages of a streaming gateway call; the call is cancelled when the consumer stops early (the HTTP
    client went away), so the gateway stops synthesising for nobody."""
    try:
        async for message in call:
            yield message
    finally:
        call.cancel()
