"""Whisper-style 128-bin log-mel (what ``whisper.log_mel_spectrogram(x, n_mels=128)`` computes).

STFT n_fft 400, hop 160, periodic Hann window, centred with reflect padding, last frame dropped,
power spectrum; Slaney-style mel filters (librosa's default ``filters.mel``, built here in numpy);
log10 clamped at 1e-10, floored at max − 8, then (x + 4) / 4. 100 frames per second, no padding.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 128


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / (200.0 / 3), np.log(6.4) / 27.0
    linear = hz / (200.0 / 3)
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / (200.0 / 3), np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), mel * (200.0 / 3))


@functools.cache
def mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, Slaney area normalisation, 0 Hz to Nyquist."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]
    return weights.astype(np.float32)


def frame_count(samples: int) -> int:
    """Mel frames for ``samples`` samples (centred STFT, last frame dropped)."""
    return samples // HOP


def log_mel(samples: np.ndarray) -> np.ndarray:
    """[128, len // 160] float32 log-mel of 16 kHz mono float32 audio (at least one hop long)."""
    if len(samples) < HOP:
        raise ValueError(f"log-mel needs at least {HOP} samples, got {len(samples)}")
    audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    spectrum = torch.stft(
        audio, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, pad_mode="reflect", return_complex=True
    )
    power = spectrum[..., :-1].abs() ** 2
    mel = torch.from_numpy(mel_filters()) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()
