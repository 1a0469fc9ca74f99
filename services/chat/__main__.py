"""Composition root of the chat service: ``python -m services.chat [--flags]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc

from services.chat.engines import create_engine
from services.chat.servicer import ChatServicer
from services.chat.settings import ChatSettings
from services.common.server import ServiceDefinition, compose_stage, run_service
from services.common.settings import load_settings

SERVICE_NAME = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name


async def build(argv: Sequence[str] | None) -> ServiceDefinition:
    settings = load_settings(ChatSettings, argv)
    return await compose_stage(
        "chat",
        settings,
        create_engine,
        lambda engine: ChatServicer(engine, settings),
        chat_pb2_grpc.add_ChatServiceServicer_to_server,
        SERVICE_NAME,
    )


if __name__ == "__main__":
    run_service(build, sys.argv[1:])
