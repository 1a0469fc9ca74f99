"""Composition root of the gateway: ``python -m services.gateway [--flags]``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.common.logs import configure_logging
from services.common.server import ServiceDefinition, run_service
from services.common.settings import load_settings
from services.gateway.servicer import GatewayServicer
from services.gateway.sessions import SessionStore
from services.gateway.settings import GatewaySettings
from services.gateway.stages import Stages

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


async def build(argv: Sequence[str] | None) -> ServiceDefinition:
    settings = load_settings(GatewaySettings, argv)
    configure_logging("gateway", settings.log_level)
    stages = Stages(settings)
    sessions = SessionStore(Path(settings.sessions_dir), settings.max_sessions, settings.session_ttl_seconds)
    sweeper = asyncio.create_task(sessions.sweep_forever(settings.session_sweep_seconds))
    servicer = GatewayServicer(stages, sessions, settings)

    async def shut_down() -> None:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await stages.close()

    return ServiceDefinition(
        name="gateway",
        settings=settings,
        register=lambda server: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        on_shutdown=shut_down,
    )


if __name__ == "__main__":
    run_service(build, sys.argv[1:])
