"""The pitch control's post-processing (services/tts/postprocess.py) on a real speech recording: the shift in
semitones measured with a pitch tracker (librosa's pYIN), the length kept, and streaming without seams, measured as
the decoder's seam test does (log-spectral distance to the offline result around each chunk boundary)."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import soxr

from services.common.controls import MAX_PITCH, MIN_PITCH
from services.tts.postprocess import PitchShifter, SpeedChanger, change_speed, shift_pitch

RATE = 22050  # the English voice's rate
SEAM_WINDOW = 2048  # samples either side of a chunk boundary (the decoder seam test's ±8 frames of 256)


@pytest.fixture
def speech(shared_data: Path) -> np.ndarray:
    """The Step-Audio prompt recording (a woman's voice, Mandarin, 4.4 s) at 22.05 kHz."""
    samples, rate = soundfile.read(shared_data / "Tingting_prompt.wav", dtype="float32")
    return soxr.resample(samples, rate, RATE).astype(np.float32)


def f0_track(samples: np.ndarray, rate: int = RATE) -> np.ndarray:
    """Fundamental frequency every 10 ms (NaN where unvoiced), by pYIN."""
    f0, voiced, _ = librosa.pyin(
        soxr.resample(samples, rate, 16000), fmin=60, fmax=900, sr=16000, frame_length=1024, hop_length=160
    )
    return np.where(voiced, f0, np.nan)


def measured_shift(original: np.ndarray, shifted: np.ndarray) -> float:
    """Median shift in semitones over the frames voiced in both (the shift keeps the timing)."""
    a, b = f0_track(original), f0_track(shifted)
    n = min(len(a), len(b))
    both = ~np.isnan(a[:n]) & ~np.isnan(b[:n])
    assert both.sum() > 100, "too few voiced frames to measure"
    return float(np.median(12 * np.log2(b[:n][both] / a[:n][both])))


def log_spectral_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the RMS over bins of the dB power difference (n_fft 1024, hop 256), as the decoder's."""

    def db(x: np.ndarray) -> np.ndarray:
        return 10 * np.log10(np.abs(librosa.stft(x, n_fft=1024, hop_length=256, center=False)) ** 2 + 1e-10)

    return float(np.sqrt(((db(a) - db(b)) ** 2).mean(0)).mean())


def seam_lsd(audio: np.ndarray, offline: np.ndarray, seams: list[int]) -> float:
    return float(
        np.mean(
            [
                log_spectral_distance(
                    audio[s - SEAM_WINDOW : s + SEAM_WINDOW], offline[s - SEAM_WINDOW : s + SEAM_WINDOW]
                )
                for s in seams
            ]
        )
    )


@pytest.mark.parametrize("semitones", [-4.0, -2.0, 2.0, 4.0])
def test_shift_moves_the_fundamental_by_the_semitones_and_keeps_the_length(
    speech: np.ndarray, semitones: float
) -> None:
    shifted = shift_pitch(speech, RATE, semitones)
    assert shifted.dtype == np.float32 and shifted.size == speech.size
    assert measured_shift(speech, shifted) == pytest.approx(semitones, abs=0.5)


@pytest.mark.parametrize(("speed", "semitones"), [(1.5, 4.0), (0.75, -3.0)])
def test_pitch_combines_with_speed(speech: np.ndarray, speed: float, semitones: float) -> None:
    """Speed first (the engine's), then pitch (the servicer's): the length follows the speed alone, the shift is
    measured against the speed-changed audio (which keeps the pitch)."""
    faster = change_speed(speech, RATE, speed)
    both = shift_pitch(faster, RATE, semitones)
    assert both.size == round(speech.size / speed)
    assert measured_shift(faster, both) == pytest.approx(semitones, abs=0.5)
    # Against the original (not frame-aligned: the timing changed), the median pitch moved by the semitones alone.
    median_shift = 12 * np.log2(np.nanmedian(f0_track(both)) / np.nanmedian(f0_track(speech)))
    assert median_shift == pytest.approx(semitones, abs=0.5)


def test_streaming_has_no_seams(speech: np.ndarray) -> None:
    """Chunk by chunk is the offline result exactly; chunks shifted on their own (no carried state) are not, and the
    seam measure sees it."""
    offline = shift_pitch(speech, RATE, 4.0)
    piece = 4410  # 0.2 s, about a decoder chunk
    seams = list(range(piece, speech.size - SEAM_WINDOW, piece))
    shifter = PitchShifter(RATE, 4.0)
    streamed = np.concatenate(
        [*(shifter.push(speech[i : i + piece]) for i in range(0, speech.size, piece)), shifter.finish()]
    )
    assert np.array_equal(streamed, offline)
    naive = np.concatenate([shift_pitch(speech[i : i + piece], RATE, 4.0) for i in range(0, speech.size, piece)])
    assert naive.size == offline.size
    assert seam_lsd(streamed, offline, seams) == 0.0
    assert seam_lsd(naive, offline, seams) > 3.0


def test_streaming_with_speed_matches_offline(speech: np.ndarray) -> None:
    """The engine's speed changer and the servicer's pitch shifter in series, chunk by chunk."""
    offline = shift_pitch(change_speed(speech, RATE, 1.25), RATE, -2.0)
    speed, pitch = SpeedChanger(RATE, 1.25), PitchShifter(RATE, -2.0)
    pieces = [pitch.push(speed.push(speech[i : i + 1000])) for i in range(0, speech.size, 1000)]
    pieces += [pitch.push(speed.finish()), pitch.finish()]
    assert np.array_equal(np.concatenate(pieces), offline)


def test_neutral_and_out_of_range() -> None:
    samples = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    assert np.array_equal(shift_pitch(samples, RATE, 0.0), samples)
    for semitones in (MIN_PITCH - 0.5, MAX_PITCH + 0.5):
        with pytest.raises(ValueError, match="out of range"):
            PitchShifter(RATE, semitones)
