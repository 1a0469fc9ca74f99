"""Prompt features: the matcha log-mel (flow conditioning) and the Kaldi fbank (CAM++ input)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import soxr
import torch

from services.tts.decoder.config import MelConfig


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[N] or [N, channels] → float32 [N] (channels mean-mixed, as the reference does)."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 2:
        array = array.mean(axis=1)
    if array.ndim != 1:
        raise ValueError(f"expected mono [N] or [N, channels] audio, got shape {array.shape}")
    return array


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """soxr (VHQ) resampling; the reference uses torchaudio's sinc resampler (see docs/decoder.md)."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate, target, quality="VHQ").astype(np.float32)


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=8)
def slaney_mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """[n_mels, n_fft//2+1] triangular filters on the Slaney mel scale, Slaney area normalisation
    (the defaults of ``librosa.filters.mel``)."""
    fmax = sr / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2)
    hz_points = _mel_to_hz_slaney(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return weights.astype(np.float32)


def log_mel(samples: np.ndarray, config: MelConfig) -> np.ndarray:
    """The matcha ``mel_spectrogram`` at ``config.sampling_rate``: reflect-pad (n_fft-hop)/2,
    STFT (periodic Hann, center=False), sqrt(|X|^2+1e-9), Slaney mel, ln(max(x, 1e-5)).
    ``samples`` float32 [N] → float32 [frames, num_mels] with frames = N // hop."""
    y = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None, None]
    pad = (config.n_fft - config.hop_size) // 2
    if y.shape[-1] <= pad:
        raise ValueError(f"prompt audio too short for the mel: {y.shape[-1]} samples")
    y = torch.nn.functional.pad(y, (pad, pad), mode="reflect")[:, 0]
    spec = torch.stft(
        y,
        config.n_fft,
        hop_length=config.hop_size,
        win_length=config.win_size,
        window=torch.hann_window(config.win_size),
        center=False,
        return_complex=True,
    )
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    basis = torch.from_numpy(
        slaney_mel_filters(config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax)
    )
    mel = torch.log(torch.clamp(basis @ magnitude[0], min=1e-5))
    return mel.T.contiguous().numpy()


def kaldi_fbank(samples_16k: np.ndarray, num_bins: int = 80) -> np.ndarray:
    """torchaudio ``kaldi.fbank(num_mel_bins=80, dither=0, sample_frequency=16000)`` defaults via
    kaldi-native-fbank (povey window, preemphasis 0.97, DC removal, 512-point FFT, 20 Hz..Nyquist,
    log power, snip_edges). Input in [-1, 1] (not scaled to int16). → float32 [frames, num_bins]."""
    import kaldi_native_fbank as knf

    options = knf.FbankOptions()
    options.frame_opts.samp_freq = 16000
    options.frame_opts.dither = 0.0
    options.frame_opts.snip_edges = True
    options.mel_opts.num_bins = num_bins
    options.use_energy = False
    computer = knf.OnlineFbank(options)
    computer.accept_waveform(16000, np.asarray(samples_16k, dtype=np.float32).tolist())
    computer.input_finished()
    frames = computer.num_frames_ready
    if frames == 0:
        return np.zeros((0, num_bins), dtype=np.float32)
    return np.stack([computer.get_frame(i) for i in range(frames)]).astype(np.float32)
