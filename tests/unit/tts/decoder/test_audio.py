"""Prompt features against independent computations (librosa)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from services.tts.decoder.audio import kaldi_fbank, log_mel, resample, slaney_mel_filters, to_mono
from services.tts.decoder.config import MelConfig
from tests.unit.tts.decoder.conftest import prompt_wav


def test_mel_filters_match_librosa() -> None:
    ours = slaney_mel_filters(22050, 1024, 80, 0.0, 8000.0)
    reference = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    np.testing.assert_allclose(ours, reference, atol=1e-7)


@pytest.mark.parametrize("seconds", [0.37, 2.0])
def test_log_mel_matches_a_librosa_computation(seconds: float) -> None:
    config = MelConfig()
    y = resample(prompt_wav(16000, seconds), 16000, 22050)
    ours = log_mel(y, config)
    pad = (config.n_fft - config.hop_size) // 2
    spec = librosa.stft(
        np.pad(y, (pad, pad), mode="reflect"), n_fft=1024, hop_length=256, win_length=1024, window="hann", center=False
    )
    magnitude = np.sqrt(np.abs(spec) ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    reference = np.log(np.maximum(basis @ magnitude, 1e-5)).T
    assert ours.shape == (len(y) // 256, 80) == reference.shape
    np.testing.assert_allclose(ours, reference, atol=2e-3)
    assert np.abs(ours - reference).mean() < 1e-4


def test_fbank_frames_and_mono() -> None:
    y = prompt_wav(16000, 1.0)
    feats = kaldi_fbank(y)
    assert feats.shape == (1 + (len(y) - 400) // 160, 80)
    assert np.isfinite(feats).all()
    stereo = np.stack([y, y], axis=1)
    np.testing.assert_array_equal(to_mono(stereo), y)
