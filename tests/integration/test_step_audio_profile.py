"""The whole step-audio profile as real processes on tiny checkpoints: tokenizer ``step-audio`` (.venv), chat
``vllm`` and tts ``step-audio`` (.venv-vllm, CPU test double for Step1's attention), and the gateway.

A spoken turn goes through the gateway: the tokenizer's audio tokens must reach the chat prompt as ``<audio_N>``
ids (the step-audio tokenizer makes no transcript, so the gateway sends the audio as tokens), the reply text is
synthesised by the step-audio TTS and PCM at 22.05 kHz comes back. The tiny models say nothing sensible: this checks
the plumbing, the prompt sizes and the timings. The cluster starts once for the module.
"""

from __future__ import annotations

import io
import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import soundfile
from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc
from stepaudio.common.v1 import speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from stepaudio_client.client import GatewayClient, wav_audio

from services.chat.engine import Message
from services.chat.prompt import after_special, build_prompt
from tests.integration.test_tts_step_audio import require_vllm_venv, step_audio_tts_env, write_voices_dir
from tools.bench_chat_vllm import CPU_TEST_ENV, VLLM_PYTHON
from tools.cluster import LocalCluster, shared_data_dir
from tools.tiny_models import write_step_audio_chat, write_step_audio_tokenizer, write_step_audio_tts
from tools.tiny_step1 import build_tokenizer

pytestmark = pytest.mark.integration

SYSTEM = "适配用户的语言，用简短口语化的文字回答"
SAMPLING = speech_pb2.SamplingParams(temperature=0.7, top_k=50, max_tokens=12, seed=3)
TTS_MAX_LENGTH = 800  # ~600 prompt ids + up to ~200 audio ids per clause (the echo LM never stops by itself)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    require_vllm_venv()
    models = tmp_path_factory.mktemp("models")
    write_step_audio_tokenizer(models)
    write_step_audio_chat(models)
    write_step_audio_tts(models)
    voices = write_voices_dir(tmp_path_factory.mktemp("voices"))
    run_dir = tmp_path_factory.mktemp("step-audio-profile")
    vllm_env = {**CPU_TEST_ENV}
    cluster = LocalCluster(
        run_dir,
        env={
            "TOKENIZER_ENGINE": "step-audio",
            "TOKENIZER_MODELS_DIR": str(models),
            "TOKENIZER_ONNX_PROVIDER": "cpu",
            "GATEWAY_DEFAULT_SYSTEM_PROMPT": SYSTEM,
            "GATEWAY_VOICE_ZH": "Tingting",
            "GATEWAY_VOICE_EN": "Tingting",
            "GATEWAY_VOICE_JA": "Tingting",
        },
        python={"chat": str(VLLM_PYTHON), "tts": str(VLLM_PYTHON)},
        service_env={
            "chat": {
                **vllm_env,
                "CHAT_ENGINE": "vllm",
                "CHAT_MODELS_DIR": str(models),
                "CHAT_VLLM_TENSOR_PARALLEL_SIZE": "1",
                "CHAT_VLLM_MAX_MODEL_LEN": "1024",
                "CHAT_VLLM_MAX_NUM_SEQS": "4",
                "CHAT_VLLM_ENFORCE_EAGER": "true",
            },
            "tts": step_audio_tts_env(models, voices, run_dir / "registry", TTS_MAX_LENGTH),
        },
    )
    started = time.monotonic()
    cluster.start(timeout=300)
    print(f"\nstep-audio profile up in {time.monotonic() - started:.1f} s")
    yield cluster
    codes = cluster.stop()
    assert codes == {"tokenizer": 0, "chat": 0, "tts": 0, "gateway": 0}, "a service did not shut down cleanly"


def recording() -> bytes:
    return (shared_data_dir() / "Tingting_prompt.wav").read_bytes()


async def stage_tokens(cluster: LocalCluster, wav: bytes) -> str:
    """The tokenizer stage's audio tokens for ``wav``, asked directly (the same call the gateway makes)."""
    async with grpc.aio.insecure_channel(cluster.services["tokenizer"].address) as channel:
        response = await tokenizer_pb2_grpc.TokenizerServiceStub(channel).Tokenize(
            tokenizer_pb2.TokenizeRequest(config=tokenizer_pb2.TokenizeConfig(emit_tokens=True), audio=wav_audio(wav))
        )
    assert response.tokens.token_ids, "the tokenizer gave no tokens"
    return response.tokens.text


async def test_spoken_turn_reaches_the_chat_lm_as_audio_tokens_and_comes_back_as_step_audio_speech(
    cluster: LocalCluster,
) -> None:
    wav = recording()
    tokens = await stage_tokens(cluster, wav)
    tokenizer = build_tokenizer()
    encode = after_special(lambda text: tokenizer.encode(text, add_special_tokens=False).ids)
    expected_prompt = build_prompt([Message("system", SYSTEM), Message("user", "", tokens)], encode)
    audio_ids = sum(1 for token in expected_prompt if token >= 65536)
    assert audio_ids == tokens.count("<audio_") > 100  # 4.4 s at 41.67 tokens/s

    async with GatewayClient(cluster.gateway_address) as client:
        started = time.monotonic()
        result = await client.chat(audio=wav_audio(wav), voice_id="Tingting", sampling=SAMPLING, timeout=240)
        elapsed = time.monotonic() - started
    summary = result.summary
    # The chat LM's prompt is exactly the reference prompt with the user's audio as <audio_N> ids.
    assert summary.prompt_tokens == len(expected_prompt)
    assert result.user_transcript == ""  # the step-audio tokenizer makes no transcript
    assert result.reply_text, "the tiny chat model wrote nothing"
    assert result.sample_rate_hz == 22050
    pcm = np.frombuffer(bytes(result.pcm), dtype="<i2")
    assert len(pcm) > 22050 // 2 and np.abs(pcm).max() > 0
    latency = summary.latency
    assert 0 < latency.first_text_seconds <= latency.first_audio_seconds <= latency.total_seconds
    print(
        f"\nspoken turn: {summary.prompt_tokens} prompt ids ({audio_ids} audio), {summary.completion_tokens} reply "
        f"ids {result.reply_text!r}; tokenize {latency.transcribe_seconds:.2f} s, first text "
        f"{latency.first_text_seconds:.2f} s, first audio {latency.first_audio_seconds:.2f} s, total "
        f"{latency.total_seconds:.2f} s for {summary.audio_seconds:.2f} s of audio "
        f"(turn RTF {latency.total_seconds / summary.audio_seconds:.2f}); client {elapsed:.2f} s"
    )
    log = cluster.services["tts"].log_file.read_text(errors="replace")
    assert '"non_audio_ids": 0' in log and '"msg": "step-audio synthesis"' in log


async def test_text_turn_and_engine_info(cluster: LocalCluster) -> None:
    async with grpc.aio.insecure_channel(cluster.services["chat"].address) as channel:
        info = await chat_pb2_grpc.ChatServiceStub(channel).GetEngineInfo(chat_pb2.GetEngineInfoRequest())
    assert (info.engine, info.supports_audio_tokens) == ("vllm", True)
    async with GatewayClient(cluster.gateway_address) as client:
        result = await client.chat("你好", voice_id="Tingting", sampling=SAMPLING, timeout=240)
    assert result.reply_text and result.sample_rate_hz == 22050 and len(result.pcm) > 0


async def test_a_cloned_voice_is_registered_used_and_deleted_through_the_gateway(cluster: LocalCluster) -> None:
    # The first 3.5 s of the cloning prompt, so voice prompt + text fit the tiny LM's 800-token budget.
    samples, rate = soundfile.read(shared_data_dir() / "prompt_wav_yuqian.wav", dtype="int16")
    buffer = io.BytesIO()
    soundfile.write(buffer, samples[: int(3.5 * rate)], rate, format="WAV", subtype="PCM_16")
    clone_wav = buffer.getvalue()
    transcript = "叫做秋风起蟹脚痒，啊，什么意思呢？"
    async with GatewayClient(cluster.gateway_address) as client:
        registered = await client.register_voice("yuqian", wav_audio(clone_wav), transcript, timeout=120)
        # The tokenizer stage computed the prompt tokens (trimmed 3.5 s clip at 41.67 tokens/s).
        assert registered.prompt_token_count > 60 and registered.prompt_token_count % 5 == 0
        assert registered.voice.cloned
        assert "yuqian" in {voice.voice_id for voice in await client.list_voices()}
        pcm, rate = bytearray(), 0
        async for chunk in client.synthesize("今天天气很好。", voice_id="yuqian", timeout=240):
            pcm += chunk.content
            rate = chunk.format.sample_rate_hz
        assert rate == 22050 and len(pcm) > 0
        await client.delete_voice("yuqian")
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            [chunk async for chunk in client.synthesize("你好。", voice_id="yuqian", timeout=60)]
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def _metric_sum(metrics_url: str, family_name: str, sample_name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels end with ``labels``' values."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == family_name
        for sample in family.samples
        if sample.name == sample_name and all(sample.labels.get(k, "").endswith(v) for k, v in labels.items())
    )


def _generate_calls(metrics_url: str) -> float:
    """Generate RPCs the chat stage has finished (its ``stepaudio_rpc_handled_total``)."""
    return _metric_sum(metrics_url, "stepaudio_rpc_handled", "stepaudio_rpc_handled_total", method="Generate")


async def test_the_chat_model_reads_the_users_emotion_from_the_audio_tokens_it_hears(cluster: LocalCluster) -> None:
    # The tiny LM answers nonsense: the gateway must then say "not detected" (by the chat model), never guess.
    async with grpc.aio.insecure_channel(cluster.services["chat"].address) as channel:
        info = await chat_pb2_grpc.ChatServiceStub(channel).GetEngineInfo(chat_pb2.GetEngineInfoRequest())
    chat_metrics, gateway_metrics = cluster.services["chat"].metrics_url, cluster.services["gateway"].metrics_url
    stage = "stepaudio_gateway_stage_duration_seconds"
    before = _generate_calls(chat_metrics)
    readings_before = _metric_sum(gateway_metrics, stage, stage + "_count", stage="emotion")
    reading_seconds_before = _metric_sum(gateway_metrics, stage, stage + "_sum", stage="emotion")
    async with GatewayClient(cluster.gateway_address) as client:
        result = await client.chat(
            audio=wav_audio(recording()),
            voice_id="Tingting",
            sampling=SAMPLING,
            reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC,
            timeout=240,
        )
    assert _generate_calls(chat_metrics) - before == 2  # the reading, then the reply
    emotion = result.user_emotion
    assert emotion.engine == f"chat:{info.model}" and not emotion.HasField("confidence")
    assert emotion.emotion in speech_pb2.SpeakerEmotion.values()
    assert result.summary.user_emotion == emotion
    if emotion.emotion == speech_pb2.SPEAKER_EMOTION_UNSPECIFIED:
        assert result.summary.reply_emotion == speech_pb2.EMOTION_UNSPECIFIED
    assert result.reply_text and len(result.pcm) > 0
    assert _metric_sum(gateway_metrics, stage, stage + "_count", stage="emotion") - readings_before == 1
    reading = _metric_sum(gateway_metrics, stage, stage + "_sum", stage="emotion") - reading_seconds_before
    print(
        f"\nchat reading: {speech_pb2.SpeakerEmotion.Name(emotion.emotion)} by {emotion.engine} in {reading:.2f} s; "
        f"understanding (tokenize + reading) {result.summary.latency.transcribe_seconds:.2f} s, first audio "
        f"{result.summary.latency.first_audio_seconds:.2f} s"
    )
