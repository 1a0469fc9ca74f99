"""Composition root of the tokenizer service: ``python -m services.tokenizer [--flags]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc

from services.common.server import ServiceDefinition, compose_stage, run_service
from services.common.settings import load_settings
from services.tokenizer.engines import create_engine
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import TokenizerSettings

SERVICE_NAME = tokenizer_pb2.DESCRIPTOR.services_by_name["TokenizerService"].full_name


async def build(argv: Sequence[str] | None) -> ServiceDefinition:
    settings = load_settings(TokenizerSettings, argv)
    return await compose_stage(
        "tokenizer",
        settings,
        create_engine,
        lambda engine: TokenizerServicer(engine, settings),
        tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server,
        SERVICE_NAME,
    )


if __name__ == "__main__":
    run_service(build, sys.argv[1:])
