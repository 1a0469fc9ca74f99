"""The synthetic engines (docs/synthetic.md): deterministic output, the configured pace, VAD events, closing a
stream ends its work, the health switch file, and a turn through the real servicers and gateway."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from stepaudio.chat.v1 import chat_pb2_grpc
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from stepaudio.tokenizer.v1 import tokenizer_pb2_grpc
from stepaudio.tts.v1 import tts_pb2_grpc
from stepaudio_client.client import GatewayClient, wav_audio

from services.chat.engine import Message, Sampling, Usage
from services.chat.engines import create_engine as create_chat_engine
from services.chat.engines.synthetic import SyntheticChatEngine
from services.chat.servicer import ChatServicer
from services.chat.settings import ChatSettings
from services.common.controls import Controls
from services.common.errors import AlreadyExists, EngineUnhealthy, FailedPrecondition, InvalidArgument
from services.gateway.clauses import ClauseSplitter
from services.gateway.servicer import GatewayServicer
from services.gateway.sessions import SessionStore
from services.gateway.settings import GatewaySettings
from services.gateway.stages import Stages
from services.tokenizer.engine import SpeechEvent, StreamOptions, TokensEvent, TranscriptEvent
from services.tokenizer.engines import create_engine as create_tokenizer_engine
from services.tokenizer.engines.synthetic import SyntheticTokenizerEngine
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import TokenizerSettings
from services.tts.engines import create_engine as create_tts_engine
from services.tts.engines.synthetic import SyntheticTtsEngine, speech_seconds
from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings
from tests.conftest import serving
from tests.unit.test_audio import wav

RATE = 16000
SAMPLING = Sampling(temperature=0.7, top_p=0.9, top_k=50, max_tokens=512, repetition_penalty=1.1)


def tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * 220 * np.arange(round(seconds * RATE)) / RATE)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


def feed_in_pieces(engine: SyntheticTokenizerEngine, audio: np.ndarray, piece: int, options: StreamOptions) -> list:
    stream = engine.open_stream(options)
    events = []
    for start in range(0, len(audio), piece):
        events += stream.feed(audio[start : start + piece])
    events += stream.finish()
    stream.close()
    return events


# --- tokenizer ------------------------------------------------------------------------------------------------------


def test_the_registry_builds_each_synthetic_engine(tmp_path: Path) -> None:
    assert isinstance(create_tokenizer_engine(TokenizerSettings(engine="synthetic")), SyntheticTokenizerEngine)
    assert isinstance(create_chat_engine(ChatSettings(engine="synthetic")), SyntheticChatEngine)
    tts = create_tts_engine(TtsSettings(engine="synthetic", registry_dir=str(tmp_path / "registry")))
    assert isinstance(tts, SyntheticTtsEngine)


def test_vad_events_and_transcripts_follow_the_energy_of_the_audio() -> None:
    engine = SyntheticTokenizerEngine(TokenizerSettings(synthetic_endpoint_seconds=0.4))
    audio = np.concatenate([silence(0.5), tone(1.0), silence(0.6), tone(0.3), silence(0.1)])
    events = feed_in_pieces(engine, audio, 1600, StreamOptions(emit_tokens=False, emit_transcript=True))
    assert events == [
        SpeechEvent(True, 0.5),
        SpeechEvent(False, 1.5),
        TranscriptEvent("utterance 1 of 1.00 s", "en", 0.5, 1.5),
        SpeechEvent(True, 2.1),
        # The stream ends 0.1 s after the second utterance, before its endpoint: finish() ends it.
        SpeechEvent(False, 2.4),
        TranscriptEvent("utterance 2 of 0.30 s", "en", 2.1, 2.4),
    ]


def test_the_endpoint_waits_for_the_configured_silence_and_quiet_audio_is_not_speech() -> None:
    options = StreamOptions(emit_tokens=False, emit_transcript=True)
    short_pause = np.concatenate([tone(0.5), silence(0.3), tone(0.5), silence(1.0)])
    patient = SyntheticTokenizerEngine(TokenizerSettings(synthetic_endpoint_seconds=0.5))
    assert [e for e in feed_in_pieces(patient, short_pause, 320, options) if isinstance(e, TranscriptEvent)] == [
        TranscriptEvent("utterance 1 of 1.30 s", "en", 0.0, 1.3)
    ]
    hasty = SyntheticTokenizerEngine(TokenizerSettings(synthetic_endpoint_seconds=0.2))
    assert len([e for e in feed_in_pieces(hasty, short_pause, 320, options) if isinstance(e, TranscriptEvent)]) == 2
    # A tone at RMS 0.007 is below the default threshold (0.02), above a threshold of 0.005.
    quiet = np.concatenate([tone(0.5, amplitude=0.01), silence(1.0)])
    assert feed_in_pieces(patient, quiet, 320, options) == []
    sensitive = SyntheticTokenizerEngine(TokenizerSettings(synthetic_rms_threshold=0.005))
    assert len(feed_in_pieces(sensitive, quiet, 320, options)) == 3


def test_speech_without_a_pause_is_cut_at_the_utterance_limit() -> None:
    engine = SyntheticTokenizerEngine(TokenizerSettings(max_utterance_seconds=1.0))
    events = feed_in_pieces(engine, tone(2.5), 1600, StreamOptions(emit_tokens=False, emit_transcript=True))
    assert [(e.text, e.start_seconds, e.end_seconds) for e in events if isinstance(e, TranscriptEvent)] == [
        ("utterance 1 of 1.00 s", 0.0, 1.0),
        ("utterance 2 of 1.00 s", 1.0, 2.0),
        ("utterance 3 of 0.50 s", 2.0, 2.5),
    ]


def test_a_chinese_language_hint_gives_a_chinese_transcript() -> None:
    engine = SyntheticTokenizerEngine(TokenizerSettings())
    events = feed_in_pieces(engine, tone(0.8), 4000, StreamOptions(False, True, language="zh-CN"))
    assert events[-1] == TranscriptEvent("第1句，0.80秒", "zh", 0.0, 0.8)


def test_tokens_are_step_audio_groups_at_25_vq06_tokens_a_second_whatever_the_chunking() -> None:
    engine = SyntheticTokenizerEngine(TokenizerSettings())
    audio = np.concatenate([silence(0.3), tone(1.5), silence(0.3)])  # 2.1 s: 17 whole groups of 120 ms
    options = StreamOptions(emit_tokens=True, emit_transcript=False)
    by_chunks = {piece: feed_in_pieces(engine, audio, piece, options) for piece in (len(audio), 1600, 333)}
    ids = {
        piece: [i for e in events if isinstance(e, TokensEvent) for i in e.token_ids]
        for piece, events in by_chunks.items()
    }
    assert ids[1600] == ids[333] == ids[len(audio)]
    tokens = ids[1600]
    assert len(tokens) == 17 * 5
    for group in range(17):
        vq02, vq06 = tokens[group * 5 : group * 5 + 2], tokens[group * 5 + 2 : group * 5 + 5]
        assert all(65536 <= i < 65536 + 1024 for i in vq02) and all(65536 + 1024 <= i < 65536 + 5120 for i in vq06)
    assert len(set(tokens)) > 40  # codes vary with position and loudness
    events = [e for e in by_chunks[1600] if isinstance(e, TokensEvent)]
    assert events[0].start_seconds == 0 and events[-1].end_seconds == pytest.approx(17 * 0.12)
    assert all(len(e.token_ids) % 5 == 0 for e in events)
    assert not any(isinstance(e, TranscriptEvent) for e in by_chunks[1600])  # not asked for


# --- chat -----------------------------------------------------------------------------------------------------------


async def collect(engine: SyntheticChatEngine, messages: list[Message], sampling: Sampling = SAMPLING):
    usage = Usage()
    started = time.perf_counter()
    times, deltas = [], []
    async for delta in engine.generate(messages, sampling, usage):
        times.append(time.perf_counter() - started)
        deltas.append(delta)
    return deltas, times, usage


async def test_the_reply_is_deterministic_punctuated_and_cut_into_clauses() -> None:
    engine = SyntheticChatEngine(ChatSettings(synthetic_tokens_per_second=1000, synthetic_first_token_seconds=0))
    question = [Message("system", "Be brief."), Message("user", "What is the weather like?")]
    first, _, usage = await collect(engine, question)
    again, _, _ = await collect(engine, question)
    other, _, _ = await collect(engine, [Message("user", "Something else entirely")])
    assert first == again and first != other
    assert len(first) == 40 and usage.completion_tokens == 40 and usage.finish_reason == "stop"
    assert usage.prompt_tokens == 7
    reply = "".join(first)
    assert reply[0].isupper() and reply.endswith(".") and reply.count(".") == 4 and reply.count(",") == 3
    splitter = ClauseSplitter(6, 24)
    clauses = [clause for delta in first for clause in splitter.push(delta)] + splitter.flush()
    assert len(clauses) >= 4 and "".join(clauses).replace(" ", "") == reply.replace(" ", "")
    chinese, _, _ = await collect(engine, [Message("user", "今天天气怎么样？")])
    assert "。" in "".join(chinese) and "，" in "".join(chinese) and " " not in "".join(chinese)
    heard, _, _ = await collect(engine, [Message("user", "", audio_tokens="<audio_1><audio_2>")])
    assert heard != first


async def test_the_reply_comes_at_the_configured_pace() -> None:
    engine = SyntheticChatEngine(
        ChatSettings(synthetic_tokens_per_second=50, synthetic_first_token_seconds=0.2, synthetic_reply_words=11)
    )
    _, times, _ = await collect(engine, [Message("user", "hello")])
    # Never faster than configured; the upper bounds leave room for a busy machine.
    assert 0.19 <= times[0] <= 0.5
    assert 0.19 <= times[-1] - times[0] <= 0.6  # 10 intervals of 20 ms


async def test_max_tokens_and_the_context_bound_the_reply() -> None:
    engine = SyntheticChatEngine(ChatSettings(synthetic_tokens_per_second=1000, context_tokens=256))
    deltas, _, usage = await collect(engine, [Message("user", "hello")], Sampling(0.7, 0.9, 50, 7, 1.1))
    assert len(deltas) == 7 and usage.completion_tokens == 7 and usage.finish_reason == "length"
    with pytest.raises(InvalidArgument, match="context holds 256"):
        engine.generate([Message("user", "word " * 300)], SAMPLING, Usage())


async def test_replies_stream_concurrently_and_closing_one_ends_its_work() -> None:
    engine = SyntheticChatEngine(ChatSettings(synthetic_tokens_per_second=20, synthetic_reply_words=10))
    started = time.perf_counter()
    await asyncio.gather(*(collect(engine, [Message("user", f"question {n}")]) for n in range(100)))
    assert time.perf_counter() - started < 2.0  # one reply takes 0.5 s; 100 at once must not queue (50 s)
    streams = [engine.generate([Message("user", "hi")], SAMPLING, Usage()) for _ in range(3)]
    for stream in streams:
        await anext(stream)
    assert engine.active_generations == 3
    for stream in streams:
        await stream.aclose()
    assert engine.active_generations == 0


# --- tts ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tts_settings(tmp_path: Path) -> TtsSettings:
    return TtsSettings(
        engine="synthetic",
        registry_dir=str(tmp_path / "registry"),
        synthetic_real_time_factor=0.05,
        synthetic_first_chunk_seconds=0.0,
    )


async def synthesize(engine: SyntheticTtsEngine, text: str, voice_id: str = "synthetic-en", speed: float = 1.0):
    voice = next(v for v in engine.voices() if v.voice_id == voice_id)
    started = time.perf_counter()
    chunks, times = [], []
    async for chunk in engine.synthesize(text, voice, Controls(speed=speed)):
        times.append(time.perf_counter() - started)
        chunks.append(chunk)
    return chunks, times


async def test_tts_audio_is_a_deterministic_tone_of_the_text_length_in_small_chunks(tts_settings) -> None:
    engine = SyntheticTtsEngine.load(tts_settings)
    assert [(v.voice_id, v.language_codes, v.native_sample_rate_hz) for v in engine.voices()] == [
        ("synthetic-en", ("en-US",), 16000),
        ("synthetic-zh", ("zh-CN",), 24000),
    ]
    text = "Hello there, how are you today?"  # 24 letters: 1.56 s
    chunks, _ = await synthesize(engine, text)
    audio = np.concatenate([c.samples for c in chunks])
    assert len(audio) == round(speech_seconds(text) * 16000) == round(24 * 0.065 * 16000)
    assert all(c.sample_rate_hz == 16000 and len(c.samples) <= 1600 for c in chunks) and len(chunks) == 16
    assert 0.2 < float(np.sqrt(np.mean(audio**2))) < 0.22 and float(np.abs(audio).max()) <= 0.3 + 1e-6
    again = np.concatenate([c.samples for c in (await synthesize(engine, text))[0]])
    other = np.concatenate([c.samples for c in (await synthesize(engine, "Hello there, how are you today!?"))[0]])
    assert np.array_equal(audio, again) and not np.array_equal(audio, other[: len(audio)])
    fast = np.concatenate([c.samples for c in (await synthesize(engine, text, speed=2.0))[0]])
    assert len(fast) == len(audio) // 2
    mandarin, _ = await synthesize(engine, "你好，世界。", "synthetic-zh")
    assert sum(len(c.samples) for c in mandarin) == round(4 * 0.2 * 24000)


async def test_tts_audio_comes_at_the_configured_real_time_factor_after_the_first_chunk_delay(tts_settings) -> None:
    engine = SyntheticTtsEngine.load(
        tts_settings.model_copy(update={"synthetic_real_time_factor": 0.2, "synthetic_first_chunk_seconds": 0.15})
    )
    chunks, times = await synthesize(engine, "a" * 31)  # 2.015 s of audio: 21 chunks
    assert len(chunks) == 21
    # Never faster than configured; the upper bounds leave room for a busy machine.
    assert 0.14 <= times[0] <= 0.45
    assert 0.39 <= times[-1] - times[0] <= 0.8  # 20 chunks of 0.1 s at RTF 0.2


async def test_closing_a_synthesis_stops_it(tts_settings) -> None:
    engine = SyntheticTtsEngine.load(tts_settings.model_copy(update={"synthetic_real_time_factor": 1.0}))
    voice = engine.voices()[0]
    stream = engine.synthesize("a long text " * 50, voice, Controls())
    await anext(stream)
    assert engine.active_syntheses == 1
    started = time.perf_counter()
    await stream.aclose()
    assert engine.active_syntheses == 0 and time.perf_counter() - started < 0.05


async def test_voices_are_cloned_through_the_registry(tts_settings) -> None:
    engine = SyntheticTtsEngine.load(tts_settings)
    prompt = wav(tone(3.0), RATE)
    cloned = await engine.register_voice("my-voice", "Mine", prompt, "a transcript", (), ("en-US",))
    assert cloned.cloned and cloned.native_sample_rate_hz == 16000
    assert "my-voice" in [v.voice_id for v in SyntheticTtsEngine.load(tts_settings).voices()]  # stored on disk
    chunks, _ = await synthesize(engine, "Hi there.", "my-voice")
    assert chunks and chunks[0].sample_rate_hz == 16000
    with pytest.raises(AlreadyExists):
        await engine.register_voice("Synthetic-EN", "", prompt, "a transcript", (), ())
    with pytest.raises(FailedPrecondition):
        await engine.delete_voice("synthetic-en")
    await engine.delete_voice("my-voice")
    assert [v.voice_id for v in engine.voices()] == ["synthetic-en", "synthetic-zh"]


# --- health switch ----------------------------------------------------------------------------------------------------


async def test_the_health_switch_file_fails_the_check_recoverably_or_fatally(tmp_path: Path) -> None:
    switch = tmp_path / "unhealthy"
    engines = [
        SyntheticTokenizerEngine(TokenizerSettings(synthetic_fail_health_file=str(switch))),
        SyntheticChatEngine(ChatSettings(synthetic_fail_health_file=str(switch))),
        SyntheticTtsEngine.load(
            TtsSettings(registry_dir=str(tmp_path / "registry"), synthetic_fail_health_file=str(switch))
        ),
    ]
    for engine in engines:
        await engine.check_health()
        switch.write_text("hang on")
        with pytest.raises(EngineUnhealthy) as raised:
            await engine.check_health()
        assert raised.value.recoverable
        switch.write_text("fatal\n")
        with pytest.raises(EngineUnhealthy) as raised:
            await engine.check_health()
        assert not raised.value.recoverable and str(switch) in raised.value.message
        switch.unlink()
        await engine.check_health()


# --- through the servicers and the gateway ----------------------------------------------------------------------------


@pytest.fixture
async def gateway(tmp_path: Path):
    """The real stage servicers with the synthetic engines, and the gateway, on in-process servers."""
    async with (
        serving(
            TokenizerSettings(),
            tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server,
            TokenizerServicer(SyntheticTokenizerEngine(TokenizerSettings()), TokenizerSettings()),
            "tokenizer",
        ) as tokenizer,
        serving(
            ChatSettings(),
            chat_pb2_grpc.add_ChatServiceServicer_to_server,
            ChatServicer(SyntheticChatEngine(ChatSettings(synthetic_reply_words=20)), ChatSettings()),
            "chat",
        ) as chat,
        serving(
            TtsSettings(),
            tts_pb2_grpc.add_TtsServiceServicer_to_server,
            TtsServicer(SyntheticTtsEngine.load(TtsSettings(registry_dir=str(tmp_path / "voices"))), TtsSettings()),
            "tts",
        ) as tts,
    ):
        settings = GatewaySettings(
            tokenizer_address=tokenizer,
            chat_address=chat,
            tts_address=tts,
            sessions_dir=str(tmp_path / "sessions"),
            voice_en="synthetic-en",
            voice_zh="synthetic-zh",
        )
        stages = Stages(settings)
        servicer = GatewayServicer(stages, SessionStore(tmp_path / "sessions", 100), settings)
        async with serving(settings, gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer, "gw") as address:
            async with GatewayClient(address) as client:
                yield client
        await stages.close()


async def test_a_spoken_chat_turn_runs_through_the_stack_with_the_synthetic_engines(gateway: GatewayClient) -> None:
    spoken = np.concatenate([silence(0.2), tone(1.2), silence(0.6)])
    result = await gateway.chat(audio=wav_audio(wav(spoken, RATE)))
    assert result.user_transcript == "utterance 1 of 1.20 s"
    assert result.reply_text.count(".") == 2 and result.summary.completion_tokens == 20
    assert result.sample_rate_hz == 16000  # synthetic-en: an English reply
    assert len(result.pcm) // 2 == pytest.approx(speech_seconds(result.reply_text) * 16000, rel=0.05)


async def test_a_streaming_chat_hears_each_utterance_and_answers_it(gateway: GatewayClient) -> None:
    async def microphone():
        yield gateway_pb2.StreamingChatRequest(config=gateway_pb2.StreamingChatConfig(disable_barge_in=True))
        audio = np.concatenate([tone(0.6), silence(0.7), tone(0.4), silence(0.7)])
        pcm = (audio * 32767).astype("<i2").tobytes()
        for start in range(0, len(pcm), 3200):
            yield gateway_pb2.StreamingChatRequest(audio_content=pcm[start : start + 3200])

    events = [event async for event in gateway.stub.StreamingChat(microphone(), timeout=30)]
    transcripts = [e.user_transcript.text for e in events if e.HasField("user_transcript")]
    assert transcripts == ["utterance 1 of 0.60 s", "utterance 2 of 0.40 s"]
    assert len([e for e in events if e.HasField("summary")]) == 2
    assert sum(len(e.audio.content) for e in events if e.HasField("audio")) > 0


async def test_unknown_voice_still_answers_not_found(gateway: GatewayClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        [chunk async for chunk in gateway.synthesize("Hello.", voice_id="nobody")]
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "synthetic-en" in raised.value.details()
