"""Requests that do not decode (malformed protobuf, invalid UTF-8 in a string field) are INVALID_ARGUMENT naming
the message type, on every handler shape, sent as raw bytes on the channel; the service stays SERVING."""

from __future__ import annotations

from pathlib import Path

import grpc
from prometheus_client import REGISTRY
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc

from services.common.server import MAX_STATUS_DETAIL_BYTES
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import TokenizerSettings
from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings
from tests.conftest import serving
from tests.fakes import FakeTokenizerEngine, FakeTtsEngine
from tests.unit.test_gateway import Cluster
from tests.unit.test_stage_servicers import PCM16_16K, assert_serving, pcm

INVALID = grpc.StatusCode.INVALID_ARGUMENT
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length far past the end
# SynthesizeRequest{text = <0xC3 0x28>}: field 1 (string), 2 bytes that are not UTF-8
BAD_UTF8_TEXT = b"\x0a\x02\xc3\x28"
BAD_UTF8_VOICE = b"\x0a\x02hi\x12\x03a\xff" + b"b"  # text "hi", voice_id "a\xffb"


async def call(channel: grpc.aio.Channel, path: str, payload, request_streaming: bool, response_streaming: bool):
    """Send raw bytes (identity serializers); return (code, details)."""
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[request_streaming, response_streaming]
    rpc = kind(path)(payload, timeout=10)
    try:
        if response_streaming:
            [message async for message in rpc]
        else:
            await rpc
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def handled(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("stepaudio_rpc_handled_total", {"method": method, "code": code}) or 0.0


async def test_undecodable_unary_requests_are_invalid_argument_naming_the_type() -> None:
    settings = TtsSettings()
    servicer = TtsServicer(FakeTtsEngine(), settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, "tts") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            before = handled("Synthesize", "INVALID_ARGUMENT")
            synthesize = "/stepaudio.tts.v1.TtsService/Synthesize"
            for payload in (GARBAGE, BAD_UTF8_TEXT, BAD_UTF8_VOICE, b"\xff" * 7):
                code, details = await call(channel, synthesize, payload, False, True)
                assert code == INVALID, details
                assert details.startswith("request could not be decoded as stepaudio.tts.v1.SynthesizeRequest: ")
                assert "UTF-8" in details and "Error" not in details  # actionable, no exception name
            assert handled("Synthesize", "INVALID_ARGUMENT") == before + 4
            code, details = await call(channel, "/stepaudio.tts.v1.TtsService/DeleteVoice", GARBAGE, False, False)
            assert code == INVALID and "stepaudio.tts.v1.DeleteVoiceRequest" in details
            # the same channel and server go on serving well-formed requests
            valid = tts_pb2.SynthesizeRequest(text="hi").SerializeToString()
            assert (await call(channel, synthesize, valid, False, True))[0] == grpc.StatusCode.OK
            voices = await tts_pb2_grpc.TtsServiceStub(channel).ListVoices(tts_pb2.ListVoicesRequest())
            assert len(voices.voices) == 2
            await assert_serving(channel)


async def test_an_undecodable_message_in_a_request_stream_is_invalid_argument() -> None:
    engine = FakeTokenizerEngine()
    settings = TokenizerSettings()
    servicer = TokenizerServicer(engine, settings)
    async with serving(settings, tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server, servicer, "t") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            path = "/stepaudio.tokenizer.v1.TokenizerService/StreamingTokenize"
            config = tokenizer_pb2.StreamingTokenizeRequest(
                config=tokenizer_pb2.TokenizeConfig(format=PCM16_16K, emit_transcript=True)
            ).SerializeToString()
            audio = tokenizer_pb2.StreamingTokenizeRequest(audio_content=pcm(0.2)).SerializeToString()
            code, details = await call(channel, path, iter([config, audio, GARBAGE, audio]), True, True)
            assert code == INVALID
            expected = "request message 3 of the stream could not be decoded as "
            assert details.startswith(expected + "stepaudio.tokenizer.v1.StreamingTokenizeRequest")
            code, details = await call(channel, path, iter([b"\x12\x01"]), True, True)
            assert code == INVALID and "request message 1 of the stream" in details
            assert engine.closed_streams == 1  # the stream opened by the first call was closed
            code, _ = await call(channel, path, iter([config, audio]), True, True)
            assert code == grpc.StatusCode.OK
            await assert_serving(channel)


async def test_the_gateway_answers_invalid_argument_for_an_undecodable_streaming_chat_message(tmp_path: Path) -> None:
    # The gateway forwards its request stream to the tokenizer stage, where grpc swallows the decoding error and
    # cancels the stage call: the caller must still learn that its message was at fault, not see CANCELLED.
    cluster = Cluster(tmp_path)
    await cluster.start()
    try:
        channel = cluster.client._channel
        path = "/stepaudio.gateway.v1.GatewayService/StreamingChat"
        config = gateway_pb2.StreamingChatRequest(
            config=gateway_pb2.StreamingChatConfig(input_format=PCM16_16K)
        ).SerializeToString()
        audio = gateway_pb2.StreamingChatRequest(audio_content=pcm(0.2)).SerializeToString()
        code, details = await call(channel, path, iter([config, audio, GARBAGE]), True, True)
        assert code == INVALID, details
        assert "could not be decoded as stepaudio.gateway.v1.StreamingChatRequest" in details
        code, details = await call(channel, "/stepaudio.gateway.v1.GatewayService/Chat", BAD_UTF8_TEXT, False, True)
        assert code == INVALID and "stepaudio.gateway.v1.ChatRequest" in details
        await assert_serving(channel)
    finally:
        await cluster.stop()


async def test_a_status_message_that_echoes_a_huge_input_is_cut_and_keeps_its_code() -> None:
    settings = TtsSettings()
    servicer = TtsServicer(FakeTtsEngine(), settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, "tts") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tts_pb2_grpc.TtsServiceStub(channel)
            for voice_id in ("v" * 100_000, "字" * 50_000):
                try:
                    [r async for r in stub.Synthesize(tts_pb2.SynthesizeRequest(text="hi", voice_id=voice_id))]
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
                    assert error.details().startswith("unknown voice")
                    assert error.details().endswith("… (truncated)")
                    assert len(error.details().encode()) <= MAX_STATUS_DETAIL_BYTES
                else:
                    raise AssertionError("expected NOT_FOUND")
            await assert_serving(channel)
