"""Streaming vs offline decoding, and what the seam handling buys."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from services.tts.decoder import StepAudioDecoder, VoiceConditioning
from services.tts.decoder.streaming import MelStitcher, fade_in
from tests.unit.tts.decoder.conftest import log_spectral_distance, with_options

# Measured on the tiny random fixtures (docs/decoder.md): stream 4.3 dB, naive chunks 6.7 dB.
STREAM_LSD_BOUND_DB = 5.0


def _stream(decoder: StepAudioDecoder, voice: VoiceConditioning, codes: np.ndarray) -> np.ndarray:
    return np.concatenate(list(decoder.decode_stream(voice, iter(codes.tolist()))))


def _boundaries(decoder: StepAudioDecoder, total: int) -> list[int]:
    o = decoder.options
    return list(range(o.first_chunk_tokens, total - o.lookahead_tokens, o.hop_tokens))


def _seam_lsd(decoder: StepAudioDecoder, audio: np.ndarray, offline: np.ndarray, seams: list[int]) -> float:
    """LSD against the offline decode in ±8 mel frames around each chunk boundary."""
    values = []
    for seam in seams:
        centre = decoder.frames_for(seam) * 256
        window = slice(centre - 2048, centre + 2048)
        values.append(log_spectral_distance(audio[window], offline[window]))
    return float(np.mean(values))


@pytest.fixture(scope="module")
def offline(decoder: StepAudioDecoder, voice: VoiceConditioning, codes: np.ndarray) -> np.ndarray:
    return decoder.decode(voice, codes)


@pytest.fixture(scope="module")
def streamed(decoder: StepAudioDecoder, voice: VoiceConditioning, codes: np.ndarray) -> np.ndarray:
    return _stream(decoder, voice, codes)


@pytest.fixture(scope="module")
def naive(decoder: StepAudioDecoder, voice: VoiceConditioning, codes: np.ndarray) -> np.ndarray:
    """Independent offline decodes of the same chunks, concatenated (no context, no fades)."""
    cuts = [0, *_boundaries(decoder, len(codes)), len(codes)]
    return np.concatenate([decoder.decode(voice, codes[a:b]) for a, b in itertools.pairwise(cuts)])


def test_stream_matches_offline_within_the_bound(
    decoder: StepAudioDecoder, offline: np.ndarray, streamed: np.ndarray, naive: np.ndarray
) -> None:
    assert streamed.shape == offline.shape and streamed.dtype == np.float32
    stream_lsd = log_spectral_distance(streamed, offline)
    n = min(naive.size, offline.size)
    naive_lsd = log_spectral_distance(naive[:n], offline[:n])
    assert stream_lsd < STREAM_LSD_BOUND_DB
    assert stream_lsd < naive_lsd - 1.0


def test_seam_handling_reduces_seam_error(
    decoder: StepAudioDecoder,
    voice: VoiceConditioning,
    codes: np.ndarray,
    offline: np.ndarray,
    streamed: np.ndarray,
    naive: np.ndarray,
) -> None:
    """Un-smoothed seams (no context, no look-ahead, hard cuts) must be measurably worse."""
    seams = _boundaries(decoder, len(codes))
    hard = _stream(with_options(decoder, context_tokens=0, lookahead_tokens=0, mel_fade_frames=0), voice, codes)
    assert hard.shape == offline.shape
    smooth_error = _seam_lsd(decoder, streamed, offline, seams)
    hard_error = _seam_lsd(decoder, hard, offline, seams)
    naive_error = _seam_lsd(decoder, naive, offline, seams)
    assert smooth_error < 0.9 * hard_error
    assert smooth_error < 0.8 * naive_error


def test_identical_overlaps_stitch_back_exactly() -> None:
    mel = np.random.default_rng(0).standard_normal((80, 100)).astype(np.float32)
    stitcher = MelStitcher(fade_frames=10)
    out = [stitcher.push(mel[:, 0:50], 0, boundary=40, final=False)]
    out.append(stitcher.push(mel[:, 25:80], 25, boundary=70, final=False))
    out.append(stitcher.push(mel[:, 60:100], 60, boundary=100, final=True))
    np.testing.assert_allclose(np.concatenate(out, axis=1), mel, atol=1e-6)
    ramp = fade_in(10)
    np.testing.assert_allclose(ramp + ramp[::-1], 1.0, atol=1e-6)


def test_first_chunk_after_configured_tokens(
    decoder: StepAudioDecoder, voice: VoiceConditioning, codes: np.ndarray
) -> None:
    pulled = []

    def source() -> Iterator[int]:
        for code in codes.tolist():
            pulled.append(code)
            yield code

    for first_chunk in (10, 25):
        pulled.clear()
        stream = with_options(decoder, first_chunk_tokens=first_chunk).decode_stream(voice, source())
        chunk = next(stream)
        assert len(pulled) == first_chunk + decoder.options.lookahead_tokens
        assert 0 < chunk.size < decoder.frames_for(first_chunk) * 256
        stream.close()


def test_short_and_empty_streams(decoder: StepAudioDecoder, voice: VoiceConditioning, codes: np.ndarray) -> None:
    assert list(decoder.decode_stream(voice, iter([]))) == []
    short = codes[:7]
    np.testing.assert_allclose(_stream(decoder, voice, short), decoder.decode(voice, short), atol=1e-6)
