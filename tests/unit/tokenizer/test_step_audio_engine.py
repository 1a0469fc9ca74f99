"""The step-audio engine on the tiny fixtures: rates, ranges, interleave, streaming = one-shot."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.tokenizer.engine import StreamOptions, TokensEvent, audio_token_text
from services.tokenizer.engines.step_audio.engine import StepAudioTokenizerEngine
from services.tokenizer.engines.step_audio.interleave import ID_LIMIT, VQ06_OFFSET, parse_audio_token_text
from services.tokenizer.engines.step_audio.layout import ModelsDirError, check_models_dir, require_models_dir
from services.tokenizer.engines.step_audio.preprocess import energy_norm, trim_silence
from services.tokenizer.engines.step_audio.vq02 import nearest_centre
from services.tokenizer.settings import TokenizerSettings

TOKENS = StreamOptions(emit_tokens=True, emit_transcript=False)


def tokenize(engine: StepAudioTokenizerEngine, samples: np.ndarray, chunk: int | None = None) -> list[TokensEvent]:
    stream = engine.open_stream(TOKENS)
    try:
        events = []
        step = chunk or max(len(samples), 1)
        for start in range(0, len(samples), step):
            events += stream.feed(samples[start : start + step])
        events += stream.finish()
    finally:
        stream.close()
    assert all(isinstance(e, TokensEvent) for e in events)
    return events


def ids_of(events: list[TokensEvent]) -> list[int]:
    return [i for e in events for i in e.token_ids]


def test_rates_groups_and_ranges_on_the_real_recordings(step_audio_engine, recordings) -> None:
    engine = step_audio_engine
    for name, samples in recordings.items():
        seconds = len(samples) / 16000
        stream = engine.open_stream(TOKENS)
        vq02 = engine.vq02.push(stream._vq02, energy_norm(samples), final=True)
        vq06 = engine.vq06.tokens(energy_norm(samples))
        stream.close()
        assert abs(len(vq06) - 25 * seconds) <= 2, name
        assert len(vq02) == math.ceil((1 + (len(samples) - 400) // 160) / 6), name  # 16.67 per second
        assert abs(len(vq02) - seconds * 50 / 3) <= 1, name
        assert vq02.min() >= 0 and vq02.max() < 1024 and vq06.min() >= 0 and vq06.max() < 4096
        ids = ids_of(tokenize(engine, samples))
        assert len(ids) % 5 == 0 and len(ids) // 5 == min(len(vq02) // 2, len(vq06) // 3), name
        groups = np.array(ids).reshape(-1, 5)
        assert ((groups[:, :2] >= 65536) & (groups[:, :2] < VQ06_OFFSET)).all(), name
        assert ((groups[:, 2:] >= VQ06_OFFSET) & (groups[:, 2:] < ID_LIMIT)).all(), name
        assert parse_audio_token_text(audio_token_text(ids)) == ids


def test_one_shot_uses_the_whole_clip_gain_when_the_peak_comes_first(step_audio_engine, recordings) -> None:
    samples = recordings["Tingting_prompt.wav"].copy()
    samples[100] = 1.0  # loudest sample in the first 240 ms block: causal gain == reference gain
    engine = step_audio_engine
    stream = engine.open_stream(TOKENS)
    vq02 = engine.vq02.push(stream._vq02, energy_norm(samples), final=True)
    stream.close()
    vq06 = engine.vq06.tokens(energy_norm(samples))
    ids = ids_of(tokenize(engine, samples))
    groups = len(ids) // 5
    expected = [
        [65536 + int(a) for a in vq02[2 * g : 2 * g + 2]] + [VQ06_OFFSET + int(b) for b in vq06[3 * g : 3 * g + 3]]
        for g in range(groups)
    ]
    assert ids == [i for group in expected for i in group]


@pytest.mark.parametrize("chunk", [320, 1000, 3840, 7777, 16000])  # 20 ms .. 1 s
@pytest.mark.parametrize("window", [30.0, 2.0])
def test_streaming_equals_one_shot(tiny_models_dir: Path, recordings, chunk: int, window: float) -> None:
    engine = _engine(tiny_models_dir, vq06_window_seconds=window)
    samples = recordings["TingtingRAP_prompt.wav"]
    one_shot = tokenize(engine, samples)
    streamed = tokenize(engine, samples, chunk)
    assert ids_of(streamed) == ids_of(one_shot)
    if window == 2.0:  # tokens come out while audio is still arriving, with contiguous times
        assert len(streamed) >= 5
    assert streamed[0].start_seconds == 0.0
    assert all(a.end_seconds == pytest.approx(b.start_seconds) for a, b in itertools.pairwise(streamed))
    assert streamed[-1].end_seconds == pytest.approx(len(ids_of(streamed)) / 5 * 0.12)


_ENGINES: dict[tuple[str, float, bool, int], StepAudioTokenizerEngine] = {}


def _engine(models: Path, vq06_window_seconds: float = 30.0, trim: bool = False, streams: int = 16):
    key = (str(models), vq06_window_seconds, trim, streams)
    if key not in _ENGINES:
        settings = TokenizerSettings(
            models_dir=str(models), vq06_window_seconds=vq06_window_seconds, trim_silence=trim, max_streams=streams
        )
        _ENGINES[key] = StepAudioTokenizerEngine.load(settings)
    return _ENGINES[key]


def test_memory_per_stream_is_bounded(tiny_models_dir: Path, recordings) -> None:
    engine = _engine(tiny_models_dir, vq06_window_seconds=2.0)
    samples = np.tile(recordings["TingtingRAP_prompt.wav"], 6)  # ~65 s
    stream = engine.open_stream(TOKENS)
    peak = 0
    for start in range(0, len(samples), 8000):
        stream.feed(samples[start : start + 8000])
        peak = max(peak, stream.state_bytes())
    stream.finish()
    stream.close()
    assert peak < 2 * 32000 * 4 + 200_000  # one 2 s window + a chunk + a fixed-size encoder cache


def test_trim_silence_tokenizes_at_finish(tiny_models_dir: Path, recordings) -> None:
    engine = _engine(tiny_models_dir, trim=True)
    speech = recordings["Tingting_prompt.wav"]
    padded = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(16000, np.float32)])
    stream = engine.open_stream(TOKENS)
    assert stream.feed(padded) == []
    ids = ids_of(stream.finish())
    stream.close()
    assert 0 < len(ids) // 5 < len(padded) / 16000 / 0.12 - 10  # at least ~1.2 s of silence was cut
    trimmed = trim_silence(padded)
    assert len(trimmed) % 240 == 0 and len(trimmed) < len(padded)


def test_a_trimmed_stream_is_limited_to_the_whole_clip_limit(tiny_models_dir: Path, recordings) -> None:
    engine = StepAudioTokenizerEngine.load(TokenizerSettings(models_dir=str(tiny_models_dir), max_audio_seconds=8))
    speech = recordings["Tingting_prompt.wav"]
    stream = engine.open_stream(StreamOptions(emit_tokens=True, emit_transcript=False, trim_silence=True))
    try:
        with pytest.raises(InvalidArgument, match=r"over 8 s .*TOKENIZER_MAX_AUDIO_SECONDS"):
            for _ in range(round(8 * 16000 / len(speech)) + 1):
                assert stream.feed(speech) == []
    finally:
        stream.close()
    # Without trimming nothing is held back, so the stream goes on past it.
    assert len(ids_of(tokenize(engine, np.tile(speech, 3), chunk=16000))) > 0


def test_too_short_and_non_finite_audio_are_invalid(step_audio_engine) -> None:
    stream = step_audio_engine.open_stream(TOKENS)
    stream.feed(np.full(800, 0.1, np.float32))
    with pytest.raises(InvalidArgument, match="too short for one token group"):
        stream.finish()
    stream.close()
    stream = step_audio_engine.open_stream(TOKENS)
    with pytest.raises(InvalidArgument, match="NaN or infinite"):
        stream.feed(np.array([0.0, np.nan], np.float32))
    stream.close()
    assert len(ids_of(tokenize(step_audio_engine, np.full(1600, 0.1, np.float32)))) == 5  # 0.1 s: one group


def test_transcripts_are_failed_precondition_and_streams_are_limited(tiny_models_dir: Path) -> None:
    engine = _engine(tiny_models_dir, streams=2)
    assert not engine.capabilities.supports_transcript and engine.capabilities.supports_tokens
    with pytest.raises(FailedPrecondition, match="audio tokens only"):
        engine.open_stream(StreamOptions(emit_tokens=True, emit_transcript=True))
    first, second = engine.open_stream(TOKENS), engine.open_stream(TOKENS)
    with pytest.raises(ResourceExhausted, match="TOKENIZER_MAX_STREAMS=2"):
        engine.open_stream(TOKENS)
    first.close()
    first.close()  # idempotent
    engine.open_stream(TOKENS).close()
    second.close()
    assert engine.open_streams == 0


def test_nearest_centre_is_euclidean_argmin() -> None:
    rng = np.random.default_rng(1)
    features, codebook = rng.standard_normal((50, 8)), rng.standard_normal((1024, 8))
    expected = np.linalg.norm(features[:, None] - codebook[None], axis=2).argmin(axis=1)
    assert (nearest_centre(features, codebook) == expected).all()


def test_models_dir_check_lists_every_problem(tiny_models_dir: Path, tmp_path: Path) -> None:
    assert check_models_dir(tiny_models_dir) == []
    assert check_models_dir(tiny_models_dir / "Step-Audio-Tokenizer") == []  # the checkpoint folder itself
    root = tmp_path / "Step-Audio-Tokenizer"
    para = root / "dengcunqin" / "speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
    para.mkdir(parents=True)
    np.save(root / "linguistic_tokenizer.npy", np.zeros((10, 4), np.float32))
    (root / "speech_tokenizer_v1.onnx").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    (para / "config.yaml").write_text("model: Paraformer\n")
    (para / "tokens.json").write_text("{not json")
    with pytest.raises(ModelsDirError) as raised:
        require_models_dir(tmp_path)
    message = str(raised.value)
    for expected in (
        "(1024, D)",
        "Git LFS pointer",
        "model.pt: missing",
        "am.mvn: missing",
        "tokens.json: not JSON",
        "ParaformerStreaming",
    ):
        assert expected in message
    assert "Step-Audio-Tokenizer: missing" in check_models_dir(tmp_path / "nowhere")[0]


async def test_a_hung_encoder_makes_the_engine_unhealthy(step_audio_engine, monkeypatch) -> None:
    """vq06 that never returns: while audio is in hand and nothing moves, check_health fails (not recoverable)."""
    import asyncio
    import threading

    from services.common.errors import EngineUnhealthy

    engine = step_audio_engine
    release = threading.Event()
    monkeypatch.setattr(engine.vq06, "tokens", lambda audio: release.wait(10) and np.zeros(0, np.int64))
    monkeypatch.setattr(engine.settings, "engine_stall_seconds", 0.2)
    await engine.check_health()  # idle: healthy
    stream = engine.open_stream(TOKENS)

    def tokenize_one_clip() -> None:
        stream.feed(np.full(3200, 0.1, np.float32))
        with pytest.raises(InvalidArgument):  # once released, the stubbed vq06 has given no codes
            stream.finish()  # the last vq06 window: hangs until released

    worker = threading.Thread(target=tokenize_one_clip)
    try:
        worker.start()
        await asyncio.sleep(0.5)
        with pytest.raises(EngineUnhealthy) as failure:
            await engine.check_health()
        assert not failure.value.recoverable and "hung" in failure.value.message
    finally:
        release.set()
        worker.join(10)
        stream.close()
    await engine.check_health()  # nothing in hand any more
