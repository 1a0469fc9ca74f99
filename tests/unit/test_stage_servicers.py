"""Stage servicers on in-process grpc.aio servers, against fake engines."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc

from services.chat.servicer import ChatServicer
from services.chat.settings import ChatSettings
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import TokenizerSettings
from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings
from tests.conftest import serving
from tests.fakes import FakeChatEngine, FakeTokenizerEngine, FakeTtsEngine
from tests.unit.test_audio import tone, wav

PCM16_16K = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000, channels=1)


def pcm(seconds: float, rate: int = 16000) -> bytes:
    return (tone(seconds, rate) * 32767).astype("<i2").tobytes()


async def expect_code(awaitable, code: grpc.StatusCode, text: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if hasattr(awaitable, "__aiter__"):
            [m async for m in awaitable]
        else:
            await awaitable
    assert raised.value.code() == code, raised.value.details()
    assert text in raised.value.details()
    return raised.value.details()


async def assert_serving(channel: grpc.aio.Channel) -> None:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


# --- tokenizer ---------------------------------------------------------------------------


@pytest.fixture
async def tokenizer():
    engine = FakeTokenizerEngine()
    settings = TokenizerSettings(max_audio_seconds=5.0, max_stream_seconds=5.0)
    servicer = TokenizerServicer(engine, settings)
    async with serving(settings, tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server, servicer, "tok") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            yield tokenizer_pb2_grpc.TokenizerServiceStub(channel), engine, channel


def stream_requests(config: tokenizer_pb2.TokenizeConfig, chunks: list[bytes]):
    yield tokenizer_pb2.StreamingTokenizeRequest(config=config)
    for chunk in chunks:
        yield tokenizer_pb2.StreamingTokenizeRequest(audio_content=chunk)


async def test_streaming_tokenize_resamples_and_streams_tokens_then_transcript(tokenizer) -> None:
    stub, engine, _ = tokenizer
    audio = pcm(1.0, 44100)
    chunks = [audio[i : i + 1764] for i in range(0, len(audio), 1764)]  # 20 ms pieces
    config = tokenizer_pb2.TokenizeConfig(
        format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=44100),
        emit_tokens=True,
        emit_transcript=True,
    )
    responses = [r async for r in stub.StreamingTokenize(stream_requests(config, chunks))]
    kinds = [r.WhichOneof("result") for r in responses]
    assert kinds[0] == "speech_event" and kinds[-1] == "transcript"
    tokens = [r.tokens for r in responses if r.HasField("tokens")]
    assert len(tokens) == 16000 // 1920  # resampled to 16 kHz before the engine
    assert all(len(t.token_ids) == 5 and t.text.count("<audio_") == 5 for t in tokens)
    assert responses[-1].transcript.text == "heard 16000 samples"
    assert engine.closed_streams == 1


async def test_tokenize_unary_accepts_wav(tokenizer) -> None:
    stub, _, _ = tokenizer
    response = await stub.Tokenize(
        tokenizer_pb2.TokenizeRequest(
            config=tokenizer_pb2.TokenizeConfig(emit_transcript=True),
            audio=audio_pb2.Audio(
                format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV), content=wav(tone(0.5, 8000), 8000)
            ),
        )
    )
    assert response.transcript.text == "heard 8000 samples"
    assert response.duration_seconds == pytest.approx(0.5)


async def test_tokenizer_bad_input_gets_invalid_argument_and_service_stays_serving(tokenizer) -> None:
    stub, engine, channel = tokenizer
    transcript_only = tokenizer_pb2.TokenizeConfig(format=PCM16_16K, emit_transcript=True)
    code = grpc.StatusCode.INVALID_ARGUMENT
    await expect_code(stub.StreamingTokenize(stream_requests(transcript_only, [])), code, "no audio")
    await expect_code(
        stub.StreamingTokenize(iter([tokenizer_pb2.StreamingTokenizeRequest(audio_content=b"12")])),
        code,
        "first message",
    )
    await expect_code(stub.StreamingTokenize(stream_requests(transcript_only, [b"\x01\x02\x03"])), code, "whole frames")
    await expect_code(stub.StreamingTokenize(stream_requests(transcript_only, [pcm(3.0)] * 2)), code, "5 s audio limit")
    bad_rate = tokenizer_pb2.TokenizeConfig(format=audio_pb2.AudioFormat(sample_rate_hz=4000), emit_transcript=True)
    await expect_code(stub.StreamingTokenize(stream_requests(bad_rate, [pcm(0.1)])), code, "out of range")
    nothing = tokenizer_pb2.TokenizeConfig(format=PCM16_16K)
    await expect_code(stub.StreamingTokenize(stream_requests(nothing, [pcm(0.1)])), code, "asks for nothing")
    await expect_code(
        stub.Tokenize(
            tokenizer_pb2.TokenizeRequest(config=transcript_only, audio=audio_pb2.Audio(content=b"garbage bytes"))
        ),
        code,
        "not a WAV",
    )
    await assert_serving(channel)
    assert engine.closed_streams == 3  # the three streams that were opened were released despite the errors


async def test_tokens_from_an_engine_without_them_is_failed_precondition() -> None:
    settings = TokenizerSettings()
    servicer = TokenizerServicer(FakeTokenizerEngine(supports_tokens=False), settings)
    async with serving(settings, tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server, servicer, "tok") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
            config = tokenizer_pb2.TokenizeConfig(format=PCM16_16K, emit_tokens=True)
            await expect_code(
                stub.StreamingTokenize(stream_requests(config, [pcm(0.1)])), grpc.StatusCode.FAILED_PRECONDITION
            )
            info = await stub.GetEngineInfo(tokenizer_pb2.GetEngineInfoRequest())
            assert not info.supports_tokens and info.supports_transcript


# --- chat --------------------------------------------------------------------------------


@pytest.fixture
async def chat():
    engine = FakeChatEngine()
    settings = ChatSettings(max_input_chars=100)
    servicer = ChatServicer(engine, settings)
    async with serving(settings, chat_pb2_grpc.add_ChatServiceServicer_to_server, servicer, "chat") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            yield chat_pb2_grpc.ChatServiceStub(channel), engine, channel


def user(text: str) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, text=text)


async def test_generate_streams_deltas_then_summary_with_defaults_applied(chat) -> None:
    stub, engine, _ = chat
    call = stub.Generate(chat_pb2.GenerateRequest(messages=[user("hi")], sampling=speech_pb2.SamplingParams(top_k=5)))
    responses = [r async for r in call]
    text = "".join(r.text_delta for r in responses[:-1])
    assert text == engine.reply
    summary = responses[-1].summary
    assert summary.finish_reason == chat_pb2.FINISH_REASON_STOP and summary.completion_tokens == len(
        engine.reply.split()
    )
    assert 0 < summary.time_to_first_token_seconds <= summary.total_seconds
    messages, sampling = engine.requests[0]
    assert sampling.top_k == 5 and sampling.temperature == pytest.approx(0.7)  # request value + engine default
    assert messages[0].role == "user" and messages[0].text == "hi"
    call = stub.Generate(chat_pb2.GenerateRequest(messages=[user("hi")]))
    metadata = await call.initial_metadata()
    assert len(dict(metadata)["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("request_", "text"),
    [
        (chat_pb2.GenerateRequest(), "messages is empty"),
        (chat_pb2.GenerateRequest(messages=[chat_pb2.ChatMessage(text="x")]), "role is not set"),
        (chat_pb2.GenerateRequest(messages=[user("   ")]), "is empty"),
        (chat_pb2.GenerateRequest(messages=[user("x" * 101)]), "limit is 100"),
        (
            chat_pb2.GenerateRequest(messages=[user("x")], sampling=speech_pb2.SamplingParams(temperature=3)),
            "temperature 3",
        ),
        (chat_pb2.GenerateRequest(messages=[user("x")], sampling=speech_pb2.SamplingParams(top_p=0)), "top_p 0"),
        (
            chat_pb2.GenerateRequest(messages=[user("x")], sampling=speech_pb2.SamplingParams(max_tokens=0)),
            "max_tokens",
        ),
    ],
)
async def test_generate_rejects_bad_requests(chat, request_, text: str) -> None:
    stub, engine, channel = chat
    await expect_code(stub.Generate(request_), grpc.StatusCode.INVALID_ARGUMENT, text)
    await assert_serving(channel)
    assert engine.requests == []


async def test_generate_audio_tokens_need_an_engine_that_reads_them(chat) -> None:
    stub, _, _ = chat
    message = chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, audio_tokens="<audio_1>")
    await expect_code(stub.Generate(chat_pb2.GenerateRequest(messages=[message])), grpc.StatusCode.FAILED_PRECONDITION)


async def test_cancelling_generate_closes_the_engine_stream(chat) -> None:
    stub, engine, _ = chat
    engine.hold = 2
    call = stub.Generate(chat_pb2.GenerateRequest(messages=[user("hi")]))
    received = [await call.read(), await call.read()]
    assert all(r.text_delta for r in received)
    call.cancel()
    for _ in range(100):
        if engine.closed:
            break
        await asyncio.sleep(0.01)
    assert engine.closed == 1 and engine.finished == 0


# --- tts ---------------------------------------------------------------------------------


@pytest.fixture
async def tts():
    engine = FakeTtsEngine()
    settings = TtsSettings(max_text_chars=50, chunk_seconds=0.1)
    servicer = TtsServicer(engine, settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, "tts") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            yield tts_pb2_grpc.TtsServiceStub(channel), engine, channel


async def test_synthesize_chunks_resamples_and_applies_volume(tts) -> None:
    stub, engine, _ = tts
    request = tts_pb2.SynthesizeRequest(
        text="hello world " * 4,
        voice_id="fake-en",
        sample_rate_hz=8000,
        controls=speech_pb2.VoiceControls(volume=0.5, speed=2.0),
    )
    chunks = [r.audio async for r in stub.Synthesize(request)]
    assert [c.sequence_number for c in chunks] == list(range(len(chunks)))
    assert all(c.format.sample_rate_hz == 8000 and c.format.encoding == audio_pb2.AUDIO_ENCODING_PCM16 for c in chunks)
    assert max(len(c.content) for c in chunks) <= 2 * 800  # 0.1 s pieces
    samples = np.frombuffer(b"".join(c.content for c in chunks), "<i2") / 32768
    assert len(samples) == pytest.approx(0.01 * 47 * 8000 / 2.0, abs=20)  # speed 2 → half the length
    assert np.max(np.abs(samples)) == pytest.approx(0.25, abs=0.02)  # tone 0.5 at volume 0.5
    assert chunks[1].offset_seconds == pytest.approx(0.1)
    assert engine.texts[0][2].speed == 2.0


async def test_list_voices_filters_by_language(tts) -> None:
    stub, _, _ = tts
    assert [v.voice_id for v in (await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices] == ["fake-en", "fake-zh"]
    assert [v.voice_id for v in (await stub.ListVoices(tts_pb2.ListVoicesRequest(language="zh"))).voices] == ["fake-zh"]


@pytest.mark.parametrize(
    ("request_", "code", "text"),
    [
        (tts_pb2.SynthesizeRequest(text=" "), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        (tts_pb2.SynthesizeRequest(text="x" * 51), grpc.StatusCode.INVALID_ARGUMENT, "limit is 50"),
        (tts_pb2.SynthesizeRequest(text="hi", voice_id="nobody"), grpc.StatusCode.NOT_FOUND, "fake-en, fake-zh"),
        (
            tts_pb2.SynthesizeRequest(text="hi", controls=speech_pb2.VoiceControls(speed=3)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "speed 3",
        ),
        (
            tts_pb2.SynthesizeRequest(text="hi", controls=speech_pb2.VoiceControls(volume=9)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "volume 9",
        ),
        (
            tts_pb2.SynthesizeRequest(text="hi", controls=speech_pb2.VoiceControls(pitch=-4.5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "controls.pitch -4.5 is out of range: use -4..4 semitones",
        ),
        (
            tts_pb2.SynthesizeRequest(text="hi", controls=speech_pb2.VoiceControls(pitch=float("nan"))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "controls.pitch nan",
        ),
        (
            tts_pb2.SynthesizeRequest(text="hi", voice_id="fake-zh", controls=speech_pb2.VoiceControls(speed=1.5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not support speed",
        ),
        (
            tts_pb2.SynthesizeRequest(text="hi", controls=speech_pb2.VoiceControls(emotion=speech_pb2.EMOTION_HAPPY)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not support emotion",
        ),
        (tts_pb2.SynthesizeRequest(text="hi", sample_rate_hz=1), grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ],
)
async def test_synthesize_rejects_bad_requests(tts, request_, code, text: str) -> None:
    stub, engine, channel = tts
    await expect_code(stub.Synthesize(request_), code, text)
    await assert_serving(channel)
    assert engine.texts == []
