"""Composition root of the tts service: ``python -m services.tts [--flags]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc

from services.common.server import ServiceDefinition, compose_stage, run_service
from services.common.settings import load_settings
from services.tts.engines import create_engine
from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings

SERVICE_NAME = tts_pb2.DESCRIPTOR.services_by_name["TtsService"].full_name


async def build(argv: Sequence[str] | None) -> ServiceDefinition:
    settings = load_settings(TtsSettings, argv)
    return await compose_stage(
        "tts",
        settings,
        create_engine,
        lambda engine: TtsServicer(engine, settings),
        tts_pb2_grpc.add_TtsServiceServicer_to_server,
        SERVICE_NAME,
    )


if __name__ == "__main__":
    run_service(build, sys.argv[1:])
