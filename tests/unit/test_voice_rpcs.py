"""Voice-management RPCs (RegisterVoice, ListVoices, DeleteVoice) on in-process gRPC servers:
the TTS servicer with a fake cloning engine over a real VoiceRegistry, and the gateway
orchestrating tokenizer → TTS. Bad input gets the right code and the services stay SERVING."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc
from stepaudio_client.client import pcm16_audio, wav_audio

from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings
from services.tts.voices import VoiceRegistry
from tests.conftest import serving
from tests.fakes import FakeCloningTtsEngine, FakeTtsEngine
from tests.unit.test_gateway import Cluster
from tests.unit.test_stage_servicers import assert_serving, expect_code
from tests.unit.tts.test_voices import TOKENS, builtin_dir, prompt_wav

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TRANSCRIPT = "叫做秋风起蟹脚痒，啊，什么意思呢？"


def open_registry(tmp_path: Path) -> VoiceRegistry:
    return VoiceRegistry.open(builtin_dir(tmp_path / "builtin"), tmp_path / "registry")


# --- TTS servicer ------------------------------------------------------------------------


@pytest.fixture
async def tts(tmp_path: Path):
    engine = FakeCloningTtsEngine(open_registry(tmp_path))
    settings = TtsSettings(max_text_chars=100)
    servicer = TtsServicer(engine, settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, "tts") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            yield tts_pb2_grpc.TtsServiceStub(channel), engine, channel


def register_request(voice_id: str = "yuqian", **fields) -> tts_pb2.RegisterVoiceRequest:
    arguments = {
        "voice_id": voice_id,
        "display_name": "于谦",
        "audio": wav_audio(prompt_wav()),
        "transcript": TRANSCRIPT,
        "prompt_tokens": list(TOKENS),
        "language_codes": ["zh"],
    } | fields
    return tts_pb2.RegisterVoiceRequest(**arguments)


async def synthesize(stub, text: str, voice_id: str = "", **controls) -> bytes:
    request = tts_pb2.SynthesizeRequest(text=text, voice_id=voice_id, controls=speech_pb2.VoiceControls(**controls))
    return b"".join([r.audio.content async for r in stub.Synthesize(request)])


async def test_tts_register_use_list_delete(tts) -> None:
    stub, engine, channel = tts
    response = await stub.RegisterVoice(register_request())
    assert response.voice.voice_id == "yuqian" and response.voice.cloned
    assert response.voice.display_name == "于谦" and list(response.voice.language_codes) == ["zh"]
    listed = (await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices
    assert [(v.voice_id, v.cloned) for v in listed] == [("Tingting", False), ("yuqian", True)]

    await synthesize(stub, "你好", "yuqian", emotion=speech_pb2.EMOTION_HAPPY)
    text, prompt = engine.calls[-1]
    assert text == "(高兴1)你好"
    assert prompt.voice_id == "yuqian" and prompt.prompt_text == TRANSCRIPT and prompt.prompt_tokens == TOKENS
    assert prompt.prompt_wav.read_bytes()[:4] == b"RIFF"

    await synthesize(stub, "yo", "Tingting", style=speech_pb2.SPEECH_STYLE_RAP)
    assert engine.calls[-1][0] == "(RAP)yo" and engine.calls[-1][1].prompt_text == "（RAP）哟"  # music variant

    # PCM16 prompts are accepted with their rate
    pcm = (np.frombuffer(prompt_wav(rate=16000)[44:], dtype="<i2")).tobytes()
    assert (await stub.RegisterVoice(register_request("pcm-voice", audio=pcm16_audio(pcm, 16000)))).voice.cloned

    await stub.DeleteVoice(tts_pb2.DeleteVoiceRequest(voice_id="yuqian"))
    listed = (await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices
    assert [v.voice_id for v in listed] == ["Tingting", "pcm-voice"]
    await expect_code(synthesize(stub, "你好", "yuqian"), grpc.StatusCode.NOT_FOUND, "unknown voice 'yuqian'")
    await assert_serving(channel)


async def test_tts_speed_is_post_processing(tts) -> None:
    stub, _, _ = tts
    normal = await synthesize(stub, "x" * 20, "Tingting")
    fast = await synthesize(stub, "x" * 20, "Tingting", speed=2.0)
    assert len(fast) == pytest.approx(len(normal) / 2, abs=4)


async def test_tts_bad_input_gets_clear_codes_and_stays_serving(tts) -> None:
    stub, _, channel = tts
    await stub.RegisterVoice(register_request())
    cases = [
        (register_request(), grpc.StatusCode.ALREADY_EXISTS, "is taken"),
        (register_request("Tingting"), grpc.StatusCode.ALREADY_EXISTS, "built-in"),
        (register_request("bad id!"), INVALID, "not valid"),
        (register_request("v", audio=wav_audio(prompt_wav(1.0))), INVALID, "3-30 s"),
        (register_request("v", audio=wav_audio(prompt_wav(31.0, rate=16000))), INVALID, "limit is 30 s"),
        (register_request("v", audio=wav_audio(prompt_wav(level=0.0))), INVALID, "silent"),
        (register_request("v", audio=wav_audio(prompt_wav(rate=8000))), INVALID, "at least 16000 Hz"),
        (register_request("v", audio=pcm16_audio(b"\0\1" * 16000, 0)), INVALID, "sample_rate_hz"),
        (register_request("v", transcript=""), INVALID, "transcript is missing"),
        (register_request("v", transcript="长" * 600), INVALID, "limit is 500"),
    ]
    for request, code, message in cases:
        await expect_code(stub.RegisterVoice(request), code, message)
    await expect_code(
        stub.DeleteVoice(tts_pb2.DeleteVoiceRequest(voice_id="Tingting")), grpc.StatusCode.FAILED_PRECONDITION
    )
    await expect_code(stub.DeleteVoice(tts_pb2.DeleteVoiceRequest(voice_id="nobody")), grpc.StatusCode.NOT_FOUND)
    await expect_code(stub.DeleteVoice(tts_pb2.DeleteVoiceRequest()), INVALID, "voice_id is empty")

    synth = [
        ({"text": "  "}, INVALID, "text is empty"),
        ({"text": "字" * 101}, INVALID, "limit is 100"),
        ({"text": "hi", "voice_id": "nobody"}, grpc.StatusCode.NOT_FOUND, "available voices: Tingting, yuqian"),
        ({"text": "(哼唱)la", "style": speech_pb2.SPEECH_STYLE_RAP}, INVALID, "contradicts"),
        ({"text": "yo", "style": speech_pb2.SPEECH_STYLE_RAP, "emotion": speech_pb2.EMOTION_SAD}, INVALID, "combined"),
        ({"text": "(慢速1)hi", "speed": 1.5}, INVALID, "speed"),
        ({"text": "hi", "language": "fr"}, INVALID, "no Step-Audio tag"),
        ({"text": "hi", "speed": 3.0}, INVALID, "speed 3 is out of range"),
        ({"text": "hi", "volume": 2.5}, INVALID, "volume 2.5 is out of range"),
    ]  # fmt: skip
    for fields, code, message in synth:
        await expect_code(synthesize(stub, **fields), code, message)
    await assert_serving(channel)
    assert len((await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices) == 2


async def test_engine_without_cloning_refuses_with_failed_precondition(tmp_path: Path) -> None:
    settings = TtsSettings()
    servicer = TtsServicer(FakeTtsEngine(), settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, "tts") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tts_pb2_grpc.TtsServiceStub(channel)
            await expect_code(
                stub.RegisterVoice(register_request()), grpc.StatusCode.FAILED_PRECONDITION, "cannot clone"
            )
            await expect_code(
                stub.DeleteVoice(tts_pb2.DeleteVoiceRequest(voice_id="x")), grpc.StatusCode.FAILED_PRECONDITION
            )
            voices = (await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices
            assert voices and not any(v.cloned for v in voices)
            await assert_serving(channel)


# --- through the gateway -----------------------------------------------------------------


async def start_cluster(tmp_path: Path, supports_tokens: bool = True) -> Cluster:
    cluster = Cluster(tmp_path)
    cluster.tts = FakeCloningTtsEngine(open_registry(tmp_path))
    cluster.tokenizer.supports_tokens = supports_tokens
    await cluster.start()
    return cluster


async def test_gateway_clone_use_delete_across_restart(tmp_path: Path) -> None:
    cluster = await start_cluster(tmp_path)
    try:
        response = await cluster.client.register_voice("yuqian", wav_audio(prompt_wav(4.0)), TRANSCRIPT, "于谦", ["zh"])
        # fake tokenizer: 5 tokens per 0.12 s of the prompt, computed with trim_silence requested
        assert response.voice.cloned and response.prompt_token_count == 5 * (4 * 16000 // 1920)
        assert [v.voice_id for v in await cluster.client.list_voices()] == ["Tingting", "yuqian"]
    finally:
        await cluster.stop()

    cluster = Cluster(tmp_path)
    cluster.tts = FakeCloningTtsEngine(VoiceRegistry.open(tmp_path / "builtin" / "voices", tmp_path / "registry"))
    await cluster.start()
    try:
        assert [(v.voice_id, v.cloned) for v in await cluster.client.list_voices()] == [
            ("Tingting", False),
            ("yuqian", True),
        ]
        audio = [chunk async for chunk in cluster.client.synthesize("你好", voice_id="yuqian")]
        assert audio
        text, prompt = cluster.tts.calls[-1]
        assert text == "你好" and prompt.voice_id == "yuqian" and len(prompt.prompt_tokens) == 5 * 33
        assert prompt.prompt_text == TRANSCRIPT
        await cluster.client.delete_voice("yuqian")
        assert [v.voice_id for v in await cluster.client.list_voices()] == ["Tingting"]
    finally:
        await cluster.stop()


async def test_gateway_registers_without_tokens_when_the_tokenizer_has_none(tmp_path: Path) -> None:
    cluster = await start_cluster(tmp_path, supports_tokens=False)
    try:
        response = await cluster.client.register_voice("plain", wav_audio(prompt_wav()), TRANSCRIPT)
        assert response.prompt_token_count == 0 and response.voice.display_name == "plain"
        assert cluster.tts.registry.get("plain").prompt_tokens == ()
    finally:
        await cluster.stop()


async def test_gateway_bad_input_gets_clear_codes_and_stays_serving(tmp_path: Path) -> None:
    cluster = await start_cluster(tmp_path)
    client = cluster.client
    try:
        await client.register_voice("yuqian", wav_audio(prompt_wav()), TRANSCRIPT)
        cases = [
            (("yuqian", wav_audio(prompt_wav()), TRANSCRIPT), grpc.StatusCode.ALREADY_EXISTS, "is taken"),
            (("tingting", wav_audio(prompt_wav()), TRANSCRIPT), grpc.StatusCode.ALREADY_EXISTS, "Tingting"),
            (("v", wav_audio(prompt_wav(2.0)), TRANSCRIPT), INVALID, "3-30 s"),
            (("v", wav_audio(prompt_wav(level=0.0)), TRANSCRIPT), INVALID, "silent"),
            (("v", wav_audio(prompt_wav(rate=8000)), TRANSCRIPT), INVALID, "16000 Hz"),
            (("v", wav_audio(prompt_wav()), ""), INVALID, "transcript is missing"),
            (("v", audio_pb2.Audio(content=b"junk"), TRANSCRIPT), INVALID, "not a readable"),
            (("no spaces", wav_audio(prompt_wav()), TRANSCRIPT), INVALID, "not valid"),
        ]
        for arguments, code, message in cases:
            await expect_code(client.register_voice(*arguments), code, message)
        await expect_code(client.delete_voice("Tingting"), grpc.StatusCode.FAILED_PRECONDITION, "built in")
        await expect_code(client.delete_voice("nobody"), grpc.StatusCode.NOT_FOUND)
        happy = speech_pb2.VoiceControls(emotion=speech_pb2.EMOTION_HAPPY)
        await expect_code(client.synthesize("(RAP)yo", voice_id="yuqian", controls=happy), INVALID, "music")
        await expect_code(client.synthesize("", voice_id="yuqian"), INVALID, "text")
        await expect_code(client.synthesize("hi", voice_id="nobody"), grpc.StatusCode.NOT_FOUND, "nobody")
        await assert_serving(client._channel)
        assert [v.voice_id for v in await client.list_voices()] == ["Tingting", "yuqian"]
    finally:
        await cluster.stop()
