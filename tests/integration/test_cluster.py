"""The real services as separate processes on loopback, with the embedded models: every RPC,
streaming, cancellation, bad input, metrics; shutdown is checked by the cluster fixture and by
the health test at the end."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import soundfile
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc
from stepaudio_client.client import GatewayClient, pcm16_audio, wav_audio

from tests.unit.test_audio import tone, wav
from tests.unit.test_stage_servicers import expect_code
from tools.cluster import ROOT, LocalCluster
from tools.speech_check import character_error_rate, speakable_reference

pytestmark = pytest.mark.integration

MANIFEST_TEXT = "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？"
SEEDED = speech_pb2.SamplingParams(temperature=0.0, seed=1, max_tokens=48)


def recording(shared_data: Path, name: str = "Tingting_prompt.wav") -> bytes:
    return (shared_data / name).read_bytes()


async def gather_audio(chunks) -> tuple[bytes, int]:
    pcm = bytearray()
    rate = 0
    async for chunk in chunks:
        pcm += chunk.content
        rate = chunk.format.sample_rate_hz
    return bytes(pcm), rate


async def test_voices_and_intelligible_synthesis_in_both_languages(cluster: LocalCluster) -> None:
    async with GatewayClient(cluster.gateway_address) as client:
        voices = {voice.voice_id: voice for voice in await client.list_voices()}
        assert {"en-joe", "zh-baker"} <= set(voices)
        for voice_id, text in (
            ("en-joe", "The weather is lovely today."),
            ("zh-baker", "今天天气很好，我们去公园散步吧。"),
        ):
            pcm, rate = await gather_audio(client.synthesize(text, voice_id=voice_id))
            assert rate == voices[voice_id].native_sample_rate_hz
            seconds = len(pcm) / 2 / rate
            assert 1.0 < seconds < 6.0
            heard = await client.transcribe(pcm16_audio(pcm, rate))
            assert character_error_rate(text, heard.transcript.text) < 0.3, heard.transcript.text


async def test_transcribe_a_real_recording(cluster: LocalCluster, shared_data: Path) -> None:
    async with GatewayClient(cluster.gateway_address) as client:
        response = await client.transcribe(wav_audio(recording(shared_data)))
    assert character_error_rate(MANIFEST_TEXT, response.transcript.text) < 0.25, response.transcript.text
    assert response.transcript.language == "zh"
    assert response.duration_seconds == pytest.approx(4.4, abs=0.1)


async def test_spoken_then_text_turns_in_a_session(cluster: LocalCluster, shared_data: Path) -> None:
    async with GatewayClient(cluster.gateway_address) as client:
        session = await client.create_session()
        spoken = await client.chat(
            audio=wav_audio(recording(shared_data)), session_id=session.session_id, sampling=SEEDED
        )
        assert character_error_rate(MANIFEST_TEXT, spoken.user_transcript) < 0.25
        assert spoken.reply_text and spoken.pcm
        assert 0 < spoken.summary.latency.first_audio_seconds < spoken.summary.latency.total_seconds
        written = await client.chat("请用一句话介绍一下长城。", session_id=session.session_id, sampling=SEEDED)
        assert "长城" in written.reply_text
        heard = await client.transcribe(pcm16_audio(bytes(written.pcm), written.sample_rate_hz))
        assert character_error_rate(speakable_reference(written.reply_text), heard.transcript.text) < 0.4
        stored = await client.get_session(session.session_id)
        assert [entry.text for entry in stored.history][::2] == [spoken.user_transcript, "请用一句话介绍一下长城。"]
        await client.delete_session(session.session_id)


async def test_stage_rpcs_directly(cluster: LocalCluster, shared_data: Path) -> None:
    samples, rate = soundfile.read(shared_data / "Tingting_prompt.wav", dtype="int16")
    pcm = samples.tobytes()
    piece = int(rate * 0.02) * 2  # 20 ms

    def requests():
        yield tokenizer_pb2.StreamingTokenizeRequest(
            config=tokenizer_pb2.TokenizeConfig(
                format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=rate),
                emit_transcript=True,
            )
        )
        for start in range(0, len(pcm), piece):
            yield tokenizer_pb2.StreamingTokenizeRequest(audio_content=pcm[start : start + piece])

    async with grpc.aio.insecure_channel(cluster.services["tokenizer"].address) as channel:
        stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        responses = [r async for r in stub.StreamingTokenize(requests())]
        kinds = [r.WhichOneof("result") for r in responses]
        assert kinds[0] == "speech_event" and "transcript" in kinds
        transcript = "".join(r.transcript.text for r in responses if r.HasField("transcript"))
        assert character_error_rate(MANIFEST_TEXT, transcript) < 0.25
        info = await stub.GetEngineInfo(tokenizer_pb2.GetEngineInfoRequest())
        assert info.engine == "embedded" and info.supports_transcript and not info.supports_tokens

    async with grpc.aio.insecure_channel(cluster.services["chat"].address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        message = chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, text="What is the capital of France? One word.")
        responses = [r async for r in stub.Generate(chat_pb2.GenerateRequest(messages=[message], sampling=SEEDED))]
        assert "Paris" in "".join(r.text_delta for r in responses)
        assert responses[-1].summary.completion_tokens > 0 and responses[-1].summary.prompt_tokens > 10
        info = await stub.GetEngineInfo(chat_pb2.GetEngineInfoRequest())
        assert info.model.startswith("qwen2.5") and info.max_context_tokens == 4096

    async with grpc.aio.insecure_channel(cluster.services["tts"].address) as channel:
        stub = tts_pb2_grpc.TtsServiceStub(channel)
        chunks = [
            r.audio async for r in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Hello.", sample_rate_hz=16000))
        ]
        assert chunks and all(c.format.sample_rate_hz == 16000 for c in chunks)


async def test_cancelled_generation_frees_the_engine(cluster: LocalCluster) -> None:
    async with grpc.aio.insecure_channel(cluster.services["chat"].address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        long_answer = chat_pb2.GenerateRequest(
            messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, text="Write a 500-word essay about the sea.")],
            sampling=speech_pb2.SamplingParams(max_tokens=1000, temperature=0.0),
        )
        call = stub.Generate(long_answer)
        await call.read()
        call.cancel()
        # The single llama.cpp worker must be free again: a short request must not wait behind
        # ~1000 tokens (over a minute on 2 cores).
        started = time.perf_counter()
        short = chat_pb2.GenerateRequest(
            messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, text="Say OK.")],
            sampling=speech_pb2.SamplingParams(max_tokens=4, temperature=0.0),
        )
        [r async for r in stub.Generate(short)]
        assert time.perf_counter() - started < 15


async def test_cancelled_turn_stops_the_gateway_stream(cluster: LocalCluster) -> None:
    async with GatewayClient(cluster.gateway_address) as client:
        call = client.chat_stream("Tell me a long story about a dragon.", timeout=120)
        async for event in call:
            if event.HasField("audio"):
                break
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
        # The cancellation reached the chat stage: its single worker is free for the next turn.
        started = time.perf_counter()
        result = await client.chat("Say OK.", text_only=True, sampling=SEEDED, timeout=30)
        assert result.reply_text and time.perf_counter() - started < 15


@pytest.mark.parametrize(
    ("make_call", "code", "text"),
    [
        (lambda c: c.transcribe(audio_pb2.Audio()), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (
            lambda c: c.transcribe(wav_audio(b"RIFF....WAVEfmt garbage")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a readable",
        ),
        (lambda c: c.transcribe(audio_pb2.Audio(content=b"hello, world")), grpc.StatusCode.INVALID_ARGUMENT, "not set"),
        (
            lambda c: c.transcribe(
                audio_pb2.Audio(
                    format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV, sample_rate_hz=44100),
                    content=wav(tone(0.5, 16000), 16000),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not match",
        ),
        (
            lambda c: c.transcribe(pcm16_audio(b"\x00\x00" * 16000 * 61, 16000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit is 60",
        ),
        (lambda c: c.synthesize("   "), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        (lambda c: c.synthesize("x" * 2001), grpc.StatusCode.INVALID_ARGUMENT, "limit is 2000"),
        (lambda c: c.synthesize("hi", voice_id="nobody"), grpc.StatusCode.NOT_FOUND, "available voices"),
        (
            lambda c: c.synthesize("hi", controls=speech_pb2.VoiceControls(speed=5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "speed 5",
        ),
        (
            lambda c: c.synthesize("hi", controls=speech_pb2.VoiceControls(emotion=speech_pb2.EMOTION_SAD)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not support emotion",
        ),
        (lambda c: c.chat_stream(""), grpc.StatusCode.INVALID_ARGUMENT, "input is empty"),
        (lambda c: c.chat_stream("x" * 4001), grpc.StatusCode.INVALID_ARGUMENT, "limit is 4000"),
        (lambda c: c.chat_stream("hi", session_id="f" * 32), grpc.StatusCode.NOT_FOUND, "does not exist"),
        (
            lambda c: c.transcribe(pcm16_audio(b"\x00\x00" * (9 * 1024 * 1024), 16000)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "larger than max",
        ),
    ],
)
async def test_bad_input_gets_the_right_status_and_everything_stays_serving(
    cluster: LocalCluster, make_call, code, text
) -> None:
    async with GatewayClient(cluster.gateway_address, max_message_bytes=64 * 1024 * 1024) as client:
        call = make_call(client)
        await expect_code(call, code, text)
    for service in cluster.services.values():  # grpc.health.v1 SERVING (the HTTP service: /readyz answers 200)
        assert service.is_ready(), service.name


def test_gateway_metrics_hold_latency_histograms(cluster: LocalCluster) -> None:
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{cluster.services['gateway'].metrics_port}/metrics").read().decode()
    )
    counts = {
        line.split()[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.endswith(tuple("0123456789")) and "_count" in line.split()[0]
    }
    for name in (
        "stepaudio_gateway_time_to_first_audio_seconds_count",
        "stepaudio_gateway_chat_time_to_first_token_seconds_count",
        "stepaudio_gateway_tts_first_chunk_seconds_count",
    ):
        assert counts.get(name, 0) > 0, name
    assert 'stepaudio_rpc_handled_total{code="INVALID_ARGUMENT",method="Transcribe"}' in text
    assert 'stepaudio_gateway_stage_duration_seconds_count{stage="tokenize"}' in text


def test_health_goes_not_serving_on_sigterm_and_the_process_exits_cleanly(tmp_path: Path) -> None:
    port_file = tmp_path / "ports"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.gateway", "--port-file", str(port_file), "--sessions-dir", str(tmp_path / "s"),
         "--shutdown-grace-seconds", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=20)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(20) == 0
        logs = [json.loads(line) for line in process.stderr.read().decode().splitlines() if line.startswith("{")]
        assert [entry["msg"] for entry in logs][-2:] == ["shutting down", "stopped"]
    finally:
        process.kill()


async def _microphone(pcm: bytes, rate: int, gap_seconds: float, queue: asyncio.Queue) -> None:
    """Feed ``pcm`` in 20 ms pieces (4× faster than real time), then silence, into ``queue``."""
    piece = int(rate * 0.02) * 2
    for start in range(0, len(pcm), piece):
        await queue.put(gateway_pb2.StreamingChatRequest(audio_content=pcm[start : start + piece]))
        await asyncio.sleep(0.005)
    await queue.put(gateway_pb2.StreamingChatRequest(audio_content=bytes(int(rate * gap_seconds) * 2)))


async def test_streaming_chat_answers_an_utterance_and_handles_barge_in(
    cluster: LocalCluster, shared_data: Path
) -> None:
    samples, rate = soundfile.read(shared_data / "Tingting_prompt.wav", dtype="int16")
    pcm = samples.tobytes()
    queue: asyncio.Queue = asyncio.Queue()
    config = gateway_pb2.StreamingChatConfig(
        input_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=rate),
        sampling=speech_pb2.SamplingParams(temperature=0.0, max_tokens=200),
    )
    await queue.put(gateway_pb2.StreamingChatRequest(config=config))

    async def requests():
        while (request := await queue.get()) is not None:
            yield request

    async with GatewayClient(cluster.gateway_address) as client:
        call = client.stub.StreamingChat(requests(), timeout=240)
        await _microphone(pcm, rate, 1.0, queue)
        events = []
        async with asyncio.timeout(120):
            while (event := await call.read()) is not grpc.aio.EOF:
                events.append(event)
                if event.HasField("audio"):
                    break
        transcript = next(e.user_transcript.text for e in events if e.HasField("user_transcript"))
        assert character_error_rate(MANIFEST_TEXT, transcript) < 0.25
        await _microphone(pcm, rate, 1.0, queue)  # the user speaks again over the reply
        await queue.put(None)
        async with asyncio.timeout(120):
            while (event := await call.read()) is not grpc.aio.EOF:
                events.append(event)
    kinds = [event.WhichOneof("event") for event in events]
    assert "interrupted" in kinds, kinds
    assert kinds[-1] == "summary" and kinds.count("user_transcript") == 2
    interrupted = next(e.interrupted for e in events if e.HasField("interrupted"))
    assert interrupted.sent_audio_seconds > 0
