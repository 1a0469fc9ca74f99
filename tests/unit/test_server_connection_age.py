"""max_connection_age: the shared server ages out client connections so that clients reconnect (and re-resolve DNS,
reaching replicas added since), while the calls in flight on an aged connection finish, or are cut after the grace.

The server sees each TCP connection as a peer address with its own client port: a new peer is a new connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from services.common.server import ServiceDefinition, build_server, connection_age_options
from services.tts.settings import TtsSettings

PEER = "/test.Peer/Get"
SLOW = "/test.Peer/Slow"


async def peer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return context.peer().encode()


async def slow(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """Streams the peer, holds the call open for the seconds the request names, then streams the peer again."""
    yield context.peer().encode()
    await asyncio.sleep(float(request.decode()))
    yield context.peer().encode()


def register(server: grpc.aio.Server) -> None:
    handlers = {
        "Get": grpc.unary_unary_rpc_method_handler(peer),
        "Slow": grpc.unary_stream_rpc_method_handler(slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Peer", handlers),))


@asynccontextmanager
async def channel_to(settings: TtsSettings) -> AsyncIterator[grpc.aio.Channel]:
    definition = ServiceDefinition(name="test", settings=settings, register=register, service_names=["test.Peer"])
    server, port = build_server(definition)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


async def get_peer(channel: grpc.aio.Channel) -> str:
    return (await channel.unary_unary(PEER)(b"", timeout=5)).decode()


def test_the_options_follow_the_settings() -> None:
    assert connection_age_options(TtsSettings(max_connection_age_seconds=0)) == []
    assert connection_age_options(TtsSettings()) == [("grpc.max_connection_age_ms", 300_000)]
    assert connection_age_options(TtsSettings(max_connection_age_seconds=2.5, max_connection_age_grace_seconds=30)) == [
        ("grpc.max_connection_age_ms", 2500),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


async def test_an_aged_connection_is_replaced_while_its_call_in_flight_finishes() -> None:
    async with channel_to(TtsSettings(max_connection_age_seconds=0.5)) as channel:
        first = await get_peer(channel)
        stream = channel.unary_stream(SLOW)(b"2.0", timeout=10)
        messages = aiter(stream)
        assert (await anext(messages)).decode() == first  # the stream runs on the first connection
        await asyncio.sleep(1.0)  # past the age (0.5 s ± 10 %): the server has sent GOAWAY
        second = await get_peer(channel)
        assert second != first, "a call after the connection's age went over the same connection"
        # No grace limit: the stream opened before GOAWAY ends normally, on the old connection.
        assert (await anext(messages)).decode() == first
        assert await stream.code() == grpc.StatusCode.OK


async def test_without_an_age_the_connection_stays() -> None:
    async with channel_to(TtsSettings(max_connection_age_seconds=0)) as channel:
        first = await get_peer(channel)
        await asyncio.sleep(1.0)
        assert await get_peer(channel) == first


async def test_the_grace_cuts_a_call_that_outlives_it() -> None:
    async with channel_to(TtsSettings(max_connection_age_seconds=0.5, max_connection_age_grace_seconds=0.5)) as channel:
        stream = channel.unary_stream(SLOW)(b"5.0", timeout=10)
        messages = aiter(stream)
        await anext(messages)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await anext(messages)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert loop.time() - started < 3.0  # cut at age + grace (~1 s), not after the call's 5 s
