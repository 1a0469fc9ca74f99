"""The step-audio engine behind the real TokenizerServicer on an in-process gRPC server."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from stepaudio.common.v1 import audio_pb2
from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc

from services.tokenizer.engine import audio_token_text
from services.tokenizer.engines import create_engine
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import TokenizerSettings
from tests.conftest import serving
from tests.unit.test_audio import wav
from tests.unit.test_stage_servicers import assert_serving, expect_code, stream_requests

PCM16_16K = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000, channels=1)
TOKENS = tokenizer_pb2.TokenizeConfig(format=PCM16_16K, emit_tokens=True)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture
async def step_audio(tiny_models_dir: Path):
    settings = TokenizerSettings(
        models_dir=str(tiny_models_dir), max_audio_seconds=12.0, max_stream_seconds=12.0, vq06_window_seconds=2.0
    )
    engine = create_engine(settings.model_copy(update={"engine": "step-audio"}))
    servicer = TokenizerServicer(engine, settings)
    async with serving(settings, tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server, servicer, "tok") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            yield tokenizer_pb2_grpc.TokenizerServiceStub(channel), engine, channel


async def test_streaming_and_unary_give_the_same_tokens(step_audio, recordings) -> None:
    stub, engine, _ = step_audio
    samples = recordings["TingtingRAP_prompt.wav"]
    audio = pcm16(samples)
    chunks = [audio[i : i + 640] for i in range(0, len(audio), 640)]  # 20 ms
    responses = [r async for r in stub.StreamingTokenize(stream_requests(TOKENS, chunks))]
    assert len(responses) >= 5 and all(r.HasField("tokens") for r in responses)
    streamed = [i for r in responses for i in r.tokens.token_ids]
    assert all(r.tokens.text == audio_token_text(list(r.tokens.token_ids)) for r in responses)
    unary = await stub.Tokenize(
        tokenizer_pb2.TokenizeRequest(
            config=tokenizer_pb2.TokenizeConfig(emit_tokens=True),
            audio=audio_pb2.Audio(
                format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV), content=wav(samples, 16000)
            ),
        )
    )
    assert list(unary.tokens.token_ids) == streamed and len(streamed) % 5 == 0
    info = await stub.GetEngineInfo(tokenizer_pb2.GetEngineInfoRequest())
    assert info.engine == "step-audio" and info.supports_tokens and not info.supports_transcript
    assert engine.open_streams == 0


async def test_bad_input_is_invalid_argument_and_the_service_stays_serving(step_audio) -> None:
    stub, engine, channel = step_audio
    code = grpc.StatusCode.INVALID_ARGUMENT
    tone = (0.3 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    await expect_code(stub.StreamingTokenize(stream_requests(TOKENS, [])), code, "no audio")  # empty
    await expect_code(stub.StreamingTokenize(stream_requests(TOKENS, [pcm16(tone[:800])])), code, "too short")
    await expect_code(stub.StreamingTokenize(stream_requests(TOKENS, [b"\x01\x02\x03"])), code, "whole frames")
    bad_rate = tokenizer_pb2.TokenizeConfig(format=audio_pb2.AudioFormat(sample_rate_hz=4000), emit_tokens=True)
    await expect_code(stub.StreamingTokenize(stream_requests(bad_rate, [pcm16(tone)])), code, "out of range")
    await expect_code(stub.StreamingTokenize(stream_requests(TOKENS, [pcm16(tone)] * 13)), code, "12 s audio limit")
    unary = tokenizer_pb2.TokenizeConfig(emit_tokens=True)
    for content, text in [
        (b"garbage bytes that are no audio", "not a readable"),
        (wav(tone[:800], 16000), "too short"),
        (wav(np.tile(tone, 13), 16000), "limit"),
        (wav(np.where(np.arange(16000) == 9, np.nan, tone), 16000, "FLOAT"), "NaN or infinite"),
        (wav(tone, 16000), "does not match"),  # declared 44.1 kHz, the WAV says 16 kHz
    ]:
        rate = 44100 if text == "does not match" else 0
        fmt = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV, sample_rate_hz=rate)
        await expect_code(
            stub.Tokenize(
                tokenizer_pb2.TokenizeRequest(config=unary, audio=audio_pb2.Audio(format=fmt, content=content))
            ),
            code,
            text,
        )
    transcript = tokenizer_pb2.TokenizeConfig(format=PCM16_16K, emit_tokens=True, emit_transcript=True)
    await expect_code(
        stub.StreamingTokenize(stream_requests(transcript, [pcm16(tone)])),
        grpc.StatusCode.FAILED_PRECONDITION,
        "audio tokens only",
    )
    await assert_serving(channel)
    assert engine.open_streams == 0


def test_the_service_refuses_to_start_on_a_bad_models_dir(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as raised:
        create_engine(TokenizerSettings(engine="step-audio", models_dir=str(tmp_path)))
    assert "Step-Audio-Tokenizer: missing" in str(raised.value)
