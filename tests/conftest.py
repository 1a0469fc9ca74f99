"""Shared fixtures: in-process grpc.aio servers around servicers with fake engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from services.common.server import ServiceDefinition, build_server, set_serving
from services.common.settings import ServiceSettings
from tools.cluster import shared_data_dir


@asynccontextmanager
async def serving(
    settings: ServiceSettings, add: Callable[[object, grpc.aio.Server], None], servicer: object, name: str
) -> AsyncIterator[str]:
    """Serve ``servicer`` on 127.0.0.1:<free port> with the production interceptor, health and
    reflection; yield the address."""
    definition = ServiceDefinition(
        name=name, settings=settings, register=lambda server: add(servicer, server), service_names=[name]
    )
    server, port = build_server(definition)
    await server.start()
    await set_serving(definition, True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture
def shared_data() -> Path:
    directory = shared_data_dir()
    if not directory.is_dir():
        pytest.fail(f"the Step-Audio recordings are missing at {directory}: set STEPAUDIO_SHARED_DATA")
    return directory
