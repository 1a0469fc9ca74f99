"""HiFT: iSTFT round trip, chunked vocoding with carried phase equals the whole-mel call."""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch

from services.tts.decoder import StepAudioDecoder
from services.tts.decoder.hift import inverse_stft
from services.tts.decoder.streaming import VocoderStream


def test_istft_inverts_torch_stft() -> None:
    y = torch.from_numpy(np.random.default_rng(0).standard_normal(4096).astype(np.float32))[None]
    spec = torch.stft(y, 16, 4, 16, window=torch.hann_window(16), return_complex=True)
    back = inverse_stft(spec.abs(), spec.angle(), 16, 4)
    assert back.shape == y.shape
    torch.testing.assert_close(back, y, atol=1e-5, rtol=0)


def test_istft_matches_scipy_overlap_add() -> None:
    """Same spectrum through scipy's istft (periodic Hann, 75 % overlap, centred frames)."""
    rng = np.random.default_rng(1)
    y = rng.standard_normal(2048).astype(np.float64)
    window = scipy.signal.get_window("hann", 16, fftbins=True)
    _, _, spec = scipy.signal.stft(y, window=window, nperseg=16, noverlap=12, boundary="even", padded=False)
    spec = spec * window.sum()  # scipy scales the forward transform by 1/sum(window)
    _, reference = scipy.signal.istft(spec / window.sum(), window=window, nperseg=16, noverlap=12, boundary=True)
    spec_t = torch.from_numpy(spec)[None]
    ours = inverse_stft(spec_t.abs().float(), spec_t.angle().float(), 16, 4)[0].double().numpy()
    n = min(len(ours), len(reference))
    np.testing.assert_allclose(ours[32 : n - 32], reference[32 : n - 32], atol=1e-4)


def test_chunked_vocoding_equals_whole_mel(decoder: StepAudioDecoder) -> None:
    mel = np.random.default_rng(2).normal(-4, 1.5, (80, 230)).astype(np.float32)
    whole = decoder.vocode(mel)
    bank = decoder._banks()[2]
    stream = VocoderStream(
        lambda m, s, p, at: decoder._vocode(m, s, p, at, bank),
        256,
        context_frames=24,
        lookahead_frames=12,
        fade_samples=256,
    )
    pieces = []
    for start in range(0, 230, 37):
        pieces += list(stream.push(mel[:, start : start + 37], final=start + 37 >= 230))
    chunked = np.concatenate(pieces)
    assert chunked.shape == whole.shape == (230 * 256,)
    assert np.sqrt(np.mean((chunked - whole) ** 2)) < 1e-4 * np.sqrt(np.mean(whole**2)) + 1e-7
