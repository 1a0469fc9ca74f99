"""The project's whisper-style log-mel against an independent librosa computation."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from services.tokenizer.engines.step_audio.logmel import frame_count, log_mel, mel_filters


def librosa_log_mel(samples: np.ndarray) -> np.ndarray:
    """whisper's recipe, built from librosa: centred reflect-padded STFT (400/160, periodic Hann)."""
    spectrum = librosa.stft(samples, n_fft=400, hop_length=160, window="hann", center=True, pad_mode="reflect")
    power = np.abs(spectrum[:, :-1]).astype(np.float64) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=128).astype(np.float64) @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def test_mel_filters_match_librosa() -> None:
    expected = librosa.filters.mel(sr=16000, n_fft=400, n_mels=128)
    assert mel_filters().shape == (128, 201)
    np.testing.assert_allclose(mel_filters(), expected, atol=1e-7)


def test_log_mel_matches_librosa_on_the_real_recordings(recordings: dict[str, np.ndarray]) -> None:
    for name, samples in recordings.items():
        ours = log_mel(samples)
        assert ours.shape == (128, frame_count(len(samples))), name
        assert np.abs(ours - librosa_log_mel(samples)).max() < 1e-4, name


def test_log_mel_rejects_less_than_one_hop() -> None:
    with pytest.raises(ValueError, match="at least 160"):
        log_mel(np.zeros(100, dtype=np.float32))
