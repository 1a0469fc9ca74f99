"""The shared server: reflection, health, request ids, error mapping and RPC metrics."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc

from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings
from tests.conftest import serving
from tests.fakes import FakeTtsEngine

TTS_SERVICE = "stepaudio.tts.v1.TtsService"


async def test_reflection_lists_the_service_and_health_and_metrics_count_codes() -> None:
    settings = TtsSettings()
    servicer = TtsServicer(FakeTtsEngine(), settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, TTS_SERVICE) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {
                service.name async for response in responses for service in response.list_services_response.service
            }
            assert {TTS_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names

            before = (
                REGISTRY.get_sample_value("stepaudio_rpc_handled_total", {"method": "Synthesize", "code": "NOT_FOUND"})
                or 0.0
            )
            tts = tts_pb2_grpc.TtsServiceStub(channel)
            call = tts.Synthesize(
                tts_pb2.SynthesizeRequest(text="hi", voice_id="nobody"), metadata=(("x-request-id", "abc123"),)
            )
            try:
                [r async for r in call]
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
            assert dict(await call.initial_metadata())["x-request-id"] == "abc123"  # the caller's id is echoed
            after = REGISTRY.get_sample_value(
                "stepaudio_rpc_handled_total", {"method": "Synthesize", "code": "NOT_FOUND"}
            )
            assert after == before + 1
            assert REGISTRY.get_sample_value("stepaudio_rpc_inflight", {"method": "Synthesize"}) == 0


class BrokenTtsEngine(FakeTtsEngine):
    async def synthesize(self, text, voice, controls):
        raise RuntimeError("secret internal detail")
        yield  # pragma: no cover


async def test_an_unexpected_error_is_internal_without_leaking_details_and_the_server_survives() -> None:
    settings = TtsSettings()
    servicer = TtsServicer(BrokenTtsEngine(), settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, TTS_SERVICE) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            tts = tts_pb2_grpc.TtsServiceStub(channel)
            for _ in range(2):
                try:
                    [r async for r in tts.Synthesize(tts_pb2.SynthesizeRequest(text="hi"))]
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.INTERNAL
                    assert "secret" not in error.details() and "RuntimeError" in error.details()
                else:
                    raise AssertionError("expected INTERNAL")
            voices = await tts.ListVoices(tts_pb2.ListVoicesRequest())
            assert len(voices.voices) == 2
