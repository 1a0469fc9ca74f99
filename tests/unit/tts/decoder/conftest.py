"""Tiny decoder folders (generated once per session by tools.tiny_models) and shared helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.tts.decoder import DecoderOptions, StepAudioDecoder, VoiceConditioning
from tools.tiny_models import DECODER_FOLDERS, write_step_audio_tts_decoders


@pytest.fixture(scope="session")
def decoder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_step_audio_tts_decoders(tmp_path_factory.mktemp("tiny-decoders"))


@pytest.fixture(scope="session")
def decoder_dir(decoder_root: Path) -> Path:
    return decoder_root / DECODER_FOLDERS[0]


@pytest.fixture(scope="session")
def decoder(decoder_dir: Path) -> StepAudioDecoder:
    return StepAudioDecoder.load(decoder_dir, DecoderOptions(device="cpu", flow_dtype="float32"))


def prompt_wav(rate: int = 16000, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(1)
    return (
        0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    ).astype(np.float32)


@pytest.fixture(scope="session")
def voice(decoder: StepAudioDecoder) -> VoiceConditioning:
    return decoder.prepare_voice(prompt_wav(), 16000, np.random.default_rng(2).integers(0, 5120, 80))


@pytest.fixture(scope="session")
def codes() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 5120, 250)


def with_options(decoder: StepAudioDecoder, **changes: object) -> StepAudioDecoder:
    """The same loaded weights under other runtime options."""
    options = DecoderOptions(**{**decoder.options.__dict__, **changes})
    return StepAudioDecoder(decoder.config, decoder.flow, decoder.hift, decoder.speaker, options)


def log_spectral_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the RMS over bins of the dB power difference (n_fft 1024, hop 256)."""

    def db(x: np.ndarray) -> torch.Tensor:
        spec = torch.stft(torch.from_numpy(x), 1024, 256, window=torch.hann_window(1024), return_complex=True)
        return 10 * torch.log10(spec.abs() ** 2 + 1e-10)

    return float(((db(a) - db(b)) ** 2).mean(0).sqrt().mean())
