"""The gateway against the real stage servicers backed by fake engines, all on in-process
grpc.aio servers: orchestration, pipelining, sessions, cancellation and error mapping."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from stepaudio.chat.v1 import chat_pb2_grpc
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from stepaudio.tokenizer.v1 import tokenizer_pb2_grpc
from stepaudio.tts.v1 import tts_pb2_grpc
from stepaudio_client.client import GatewayClient, wav_audio

from services.chat.servicer import ChatServicer
from services.chat.settings import ChatSettings
from services.gateway.servicer import GatewayServicer
from services.gateway.sessions import SessionStore
from services.gateway.settings import GatewaySettings
from services.gateway.stages import Stages
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import TokenizerSettings
from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings
from tests.conftest import serving
from tests.fakes import FakeChatEngine, FakeTokenizerEngine, FakeTtsEngine
from tests.unit.test_audio import tone, wav
from tests.unit.test_stage_servicers import assert_serving, expect_code


class Cluster:
    """The three stages (real servicers, fake engines) and the gateway, each on an in-process server. A stage can
    be stopped and started again on the same port (a stage restart); ``settings`` override the gateway's."""

    def __init__(self, tmp_path: Path, **settings) -> None:
        self.chat = FakeChatEngine()
        self.tts = FakeTtsEngine()
        self.tokenizer = FakeTokenizerEngine()
        self.tts_settings = TtsSettings()
        self.sessions_dir = tmp_path / "sessions"
        self.gateway_settings = settings
        self.servers: dict[str, tuple[object, str]] = {}  # stage → (serving context, address)
        self.stack: list = []

    def _stage(self, name: str, port: int) -> tuple:
        if name == "tokenizer":
            settings = TokenizerSettings(port=port)
            return (
                settings,
                tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server,
                TokenizerServicer(self.tokenizer, settings),
            )
        if name == "chat":
            settings = ChatSettings(port=port)
            return settings, chat_pb2_grpc.add_ChatServiceServicer_to_server, ChatServicer(self.chat, settings)
        settings = self.tts_settings.model_copy(update={"port": port})
        return settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, TtsServicer(self.tts, settings)

    async def start_stage(self, name: str, port: int = 0) -> str:
        settings, add, servicer = self._stage(name, port)
        context = serving(settings, add, servicer, name)
        address = await context.__aenter__()
        self.servers[name] = (context, address)
        return address

    async def stop_stage(self, name: str) -> None:
        """The stage goes away: its in-flight calls end, its port closes."""
        context, _ = self.servers.pop(name)
        await context.__aexit__(None, None, None)

    async def start(self, chat_up: bool = True) -> GatewayClient:
        addresses = {}
        for name in ("tokenizer", "chat", "tts"):
            if name == "chat" and not chat_up:
                addresses[name] = "127.0.0.1:1"
                continue
            addresses[name] = await self.start_stage(name)
        settings = GatewaySettings(
            tokenizer_address=addresses["tokenizer"],
            chat_address=addresses["chat"],
            tts_address=addresses["tts"],
            sessions_dir=str(self.sessions_dir),
            voice_en="fake-en",
            voice_zh="fake-zh",
            max_text_chars=200,
            **self.gateway_settings,
        )
        self.settings = settings
        self.stages = Stages(settings)
        self.store = SessionStore(self.sessions_dir, 100, settings.session_ttl_seconds)
        servicer = GatewayServicer(self.stages, self.store, settings)
        context = serving(settings, gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer, "gateway")
        address = await context.__aenter__()
        self.stack.append(context)
        self.address = address
        self.client = GatewayClient(address)
        return self.client

    async def stop(self) -> None:
        await self.client.close()
        await self.stages.close()
        for context in reversed(self.stack):
            await context.__aexit__(None, None, None)
        for name in list(self.servers):
            await self.stop_stage(name)


@pytest.fixture
async def cluster(tmp_path: Path):
    cluster = Cluster(tmp_path)
    await cluster.start()
    yield cluster
    await cluster.stop()


async def test_text_turn_streams_text_and_numbered_audio_then_summary(cluster: Cluster) -> None:
    call = cluster.client.chat_stream("Say hello")
    events = [event async for event in call]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[-1] == "summary" and "user_transcript" not in kinds
    reply = "".join(e.reply_text_delta for e in events if e.HasField("reply_text_delta"))
    assert reply == cluster.chat.reply
    audio = [e.audio for e in events if e.HasField("audio")]
    assert [a.sequence_number for a in audio] == list(range(len(audio)))
    assert all(a.format.sample_rate_hz == 16000 for a in audio)  # fake-en's native rate
    spoken = [text for text, _, _ in cluster.tts.texts]
    assert spoken == ["Hello there.", "How are you today?", "I am fine."]
    assert {voice for _, voice, _ in cluster.tts.texts} == {"fake-en"}
    summary = events[-1].summary
    assert summary.reply_text == reply and summary.completion_tokens == 9
    assert summary.audio_seconds == pytest.approx(sum(len(a.content) for a in audio) / 2 / 16000)
    assert (
        0 < summary.latency.first_text_seconds <= summary.latency.first_audio_seconds <= summary.latency.total_seconds
    )
    assert summary.request_id == dict(await call.initial_metadata())["x-request-id"]
    messages, _ = cluster.chat.requests[0]
    assert [m.role for m in messages] == ["system", "user"] and messages[1].text == "Say hello"


async def test_first_audio_leaves_before_the_reply_is_finished(cluster: Cluster) -> None:
    cluster.chat.hold = 2  # the engine stops after "Hello there." until released
    call = cluster.client.chat_stream("hi")
    seen = []
    async with asyncio.timeout(10):
        async for event in call:
            seen.append(event.WhichOneof("event"))
            if seen[-1] == "audio":
                break
    assert cluster.chat.finished == 0
    cluster.chat.release.set()
    rest = [event.WhichOneof("event") async for event in call]
    assert rest[-1] == "summary" and cluster.chat.finished == 1


async def test_chinese_reply_uses_the_chinese_voice_and_sample_rate_is_honoured(cluster: Cluster) -> None:
    cluster.chat.reply = "你好，我是助手。 今天天气很好。"
    result = await cluster.client.chat("你好", sample_rate_hz=8000)
    assert {voice for _, voice, _ in cluster.tts.texts} == {"fake-zh"}
    assert result.sample_rate_hz == 8000 and len(result.pcm) > 0


async def test_replies_and_voiceless_synthesis_take_the_voice_of_their_language(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, voice_ja="fake-ja")
    cluster.tts.extra_voices = ("fake-ja",)
    await cluster.start()
    try:
        cluster.chat.reply = "こんにちは、私はアシスタントです。 今日はいい天気ですね。"
        await cluster.client.chat("こんにちは")
        cluster.chat.reply = "Hello there."
        await cluster.client.chat("hello")
        [chunk async for chunk in cluster.client.synthesize("富士山は日本で一番高い山です。")]
        [chunk async for chunk in cluster.client.synthesize("长城很长。")]
        [chunk async for chunk in cluster.client.synthesize("Good morning.")]
        [chunk async for chunk in cluster.client.synthesize("こんにちは", voice_id="fake-en")]
        voices = [voice for _, voice, _ in cluster.tts.texts]
        assert voices == ["fake-ja", "fake-ja", "fake-en", "fake-ja", "fake-zh", "fake-en", "fake-en"]
    finally:
        await cluster.stop()


async def test_pitch_reaches_the_tts_stage_and_moves_the_tone(cluster: Cluster) -> None:
    chunks = [
        c async for c in cluster.client.synthesize("hello " * 8, "fake-en", speech_pb2.VoiceControls(pitch=4, speed=2))
    ]
    samples = np.frombuffer(b"".join(c.content for c in chunks), "<i2") / 32768
    assert len(samples) == pytest.approx(0.01 * 47 * 16000 / 2, abs=20)  # the speed alone sets the length
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    assert np.argmax(spectrum) * 16000 / len(samples) == pytest.approx(440 * 2 ** (4 / 12), rel=0.02)
    assert cluster.tts.texts[-1][2].pitch == 4.0


async def test_spoken_turn_is_transcribed_and_stored_as_text_in_the_session(cluster: Cluster, tmp_path: Path) -> None:
    session = await cluster.client.create_session(system_prompt="Be brief.")
    audio = wav_audio(wav(tone(0.5, 16000), 16000))
    first = await cluster.client.chat(audio=audio, session_id=session.session_id)
    assert first.user_transcript == "heard 8000 samples"
    second = await cluster.client.chat("and now?", session_id=session.session_id, text_only=True)
    assert second.pcm == bytearray() and second.reply_text == cluster.chat.reply
    messages, _ = cluster.chat.requests[1]
    assert [(m.role, m.text) for m in messages] == [
        ("system", "Be brief."),
        ("user", "heard 8000 samples"),
        ("assistant", cluster.chat.reply),
        ("user", "and now?"),
    ]
    stored = await cluster.client.get_session(session.session_id)
    assert [entry.text for entry in stored.history] == [
        "heard 8000 samples",
        cluster.chat.reply,
        "and now?",
        cluster.chat.reply,
    ]
    reopened = await SessionStore(cluster.sessions_dir, 100).get(session.session_id)  # survives a restart
    assert len(reopened.history) == 4
    await cluster.client.delete_session(session.session_id)
    await expect_code(cluster.client.get_session(session.session_id), grpc.StatusCode.NOT_FOUND, "does not exist")


async def test_cancelling_a_turn_cancels_the_chat_stage(cluster: Cluster) -> None:
    cluster.chat.hold = 2
    call = cluster.client.chat_stream("hi")
    async for event in call:
        if event.HasField("reply_text_delta"):
            break
    call.cancel()
    for _ in range(200):
        if cluster.chat.closed:
            break
        await asyncio.sleep(0.01)
    assert cluster.chat.closed == 1 and cluster.chat.finished == 0


async def test_the_client_deadline_reaches_the_stages(cluster: Cluster) -> None:
    cluster.chat.hold = 2
    await expect_code(cluster.client.chat_stream("hi", timeout=0.5), grpc.StatusCode.DEADLINE_EXCEEDED)
    for _ in range(200):
        if cluster.chat.closed:
            break
        await asyncio.sleep(0.01)
    assert cluster.chat.closed == 1 and cluster.chat.finished == 0


@pytest.mark.parametrize(
    ("kwargs", "code", "text"),
    [
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "input is empty"),
        ({"text": "x" * 201}, grpc.StatusCode.INVALID_ARGUMENT, "limit is 200"),
        ({"text": "hi", "voice_id": "nobody"}, grpc.StatusCode.NOT_FOUND, "unknown voice"),
        ({"text": "hi", "session_id": "0" * 32}, grpc.StatusCode.NOT_FOUND, "does not exist"),
        ({"text": "hi", "session_id": "../etc/passwd"}, grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
        ({"text": "hi", "session_id": "0" * 32 + "\n"}, grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
        ({"text": "hi", "system_prompt": "x" * 201}, grpc.StatusCode.INVALID_ARGUMENT, "system_prompt is 201"),
        ({"text": "hi", "controls": speech_pb2.VoiceControls(speed=9)}, grpc.StatusCode.INVALID_ARGUMENT, "speed 9"),
        ({"text": "hi", "controls": speech_pb2.VoiceControls(pitch=7)}, grpc.StatusCode.INVALID_ARGUMENT, "pitch 7"),
        ({"text": "hi", "sample_rate_hz": 3}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
        ({"text": "hi", "sampling": speech_pb2.SamplingParams(top_p=2)}, grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        ({"audio": audio_pb2.Audio(content=b"not audio")}, grpc.StatusCode.INVALID_ARGUMENT, "not a WAV"),
        ({"audio": audio_pb2.Audio()}, grpc.StatusCode.INVALID_ARGUMENT, "input.audio is empty"),
    ],
)
async def test_bad_turns_get_the_right_code_and_the_gateway_stays_serving(cluster: Cluster, kwargs, code, text) -> None:
    await expect_code(cluster.client.chat_stream(**kwargs), code, text)
    await assert_serving(cluster.client._channel)
    result = await cluster.client.chat("still fine?")
    assert result.reply_text == cluster.chat.reply


async def test_a_stage_that_is_down_gives_unavailable_naming_it(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, stage_connect_timeout_seconds=0.5)
    client = await cluster.start(chat_up=False)
    try:
        started = time.monotonic()
        details = await expect_code(client.chat_stream("hi", text_only=True, timeout=5), grpc.StatusCode.UNAVAILABLE)
        assert details.startswith("the chat stage (127.0.0.1:1) is unavailable: not reachable for 0.5 s")
        assert 0.5 <= time.monotonic() - started < 2
    finally:
        await cluster.stop()


async def test_transcribe_synthesize_and_list_voices_pass_through(cluster: Cluster) -> None:
    response = await cluster.client.transcribe(wav_audio(wav(tone(0.25, 16000), 16000)))
    assert response.transcript.text == "heard 4000 samples"
    assert response.duration_seconds == pytest.approx(0.25)
    chunks = [chunk async for chunk in cluster.client.synthesize("hello", voice_id="fake-zh")]
    assert chunks and chunks[0].format.sample_rate_hz == 24000
    assert [v.voice_id for v in await cluster.client.list_voices("en")] == ["fake-en"]
    await expect_code(
        cluster.client.synthesize("", voice_id="fake-en"), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"
    )
    await expect_code(cluster.client.transcribe(audio_pb2.Audio()), grpc.StatusCode.INVALID_ARGUMENT, "empty")
    await expect_code(
        cluster.client.stub.CreateSession(gateway_pb2.CreateSessionRequest(voice_id="nobody")),
        grpc.StatusCode.NOT_FOUND,
    )
