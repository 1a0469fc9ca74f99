"""Solver schedule, CFG combination, positional table, determinism."""

from __future__ import annotations

import math

import numpy as np
import torch

from services.tts.decoder import StepAudioDecoder, VoiceConditioning
from services.tts.decoder.encoder import relative_positions
from services.tts.decoder.flow import cosine_schedule, mel_frames
from tests.unit.tts.decoder.conftest import with_options

# bf16 values the reference uses (spec §4.4, measured on the reference code).
BF16_T_SPAN = [
    0,
    0.01171875,
    0.05078125,
    0.109375,
    0.19140625,
    0.29296875,
    0.4140625,
    0.546875,
    0.69140625,
    0.84375,
    1.0,
]


def test_cosine_schedule_closed_form() -> None:
    expected = [1 - math.cos(math.pi / 2 * k / 10) for k in range(11)]
    np.testing.assert_allclose(cosine_schedule(10).numpy(), expected, atol=1e-6)
    assert cosine_schedule(10, torch.bfloat16).float().tolist() == BF16_T_SPAN


def test_mel_length_formula() -> None:
    assert mel_frames(125, 125 / 3) == int(125 / (125 / 3) * 22050 / 256) == 258
    assert mel_frames(0, 125 / 3) == 0


def test_euler_cfg_combination(decoder: StepAudioDecoder, monkeypatch) -> None:
    """With a stub field returning a for the conditional and b for the unconditional half, 10 Euler
    steps over t ∈ [0, 1] move x by (1+λ)a − λb."""
    flow = decoder.flow
    calls = []

    def stub(x, mask, mu, t, spks, cond):
        calls.append(t.clone())
        return torch.cat([torch.full_like(x[:1], 2.0), torch.full_like(x[:1], -1.0)])

    monkeypatch.setattr(flow.decoder.estimator, "forward", stub)
    x0 = torch.zeros(1, 80, 7)
    mu = torch.zeros_like(x0)
    out = flow.solve(x0, mu, torch.ones(1, 1, 7), torch.zeros(1, 80), mu, 10, cfg_rate=0.7)
    torch.testing.assert_close(out, torch.full_like(x0, 1.7 * 2.0 + 0.7), atol=1e-5, rtol=0)
    np.testing.assert_allclose([float(t[0]) for t in calls], cosine_schedule(10)[:-1].numpy(), atol=1e-6)


def test_relative_position_table() -> None:
    table = relative_positions(4, 8, torch.float32, torch.device("cpu"))[0]
    assert table.shape == (7, 8)
    for row, r in enumerate(range(3, -4, -1)):
        for m in range(4):
            omega = 10000 ** (-2 * m / 8)
            assert abs(float(table[row, 2 * m]) - math.sin(r * omega)) < 1e-6
            assert abs(float(table[row, 2 * m + 1]) - math.cos(r * omega)) < 1e-6


def test_decode_is_deterministic_under_a_seed(
    decoder: StepAudioDecoder, voice: VoiceConditioning, codes: np.ndarray
) -> None:
    first = decoder.decode(voice, codes[:60])
    assert first.dtype == np.float32 and first.size == decoder.frames_for(60) * 256
    np.testing.assert_array_equal(first, decoder.decode(voice, codes[:60]))
    other = with_options(decoder, seed=1).decode(voice, codes[:60])
    assert not np.allclose(first, other)
    assert np.abs(first).max() <= 0.99


def test_bf16_flow_runs_and_stays_close(decoder_dir, voice: VoiceConditioning, codes: np.ndarray) -> None:
    from services.tts.decoder import DecoderOptions

    bf16 = StepAudioDecoder.load(decoder_dir, DecoderOptions(device="cpu", flow_dtype="bfloat16"))
    assert bf16.flow.input_embedding.weight.dtype == torch.bfloat16
    assert next(bf16.hift.parameters()).dtype == torch.float32
    fp32 = StepAudioDecoder.load(decoder_dir, DecoderOptions(device="cpu", flow_dtype="float32"))
    a, b = bf16.decode_mel(voice, codes[:40]), fp32.decode_mel(voice, codes[:40])
    assert np.abs(a - b).mean() < 0.05 * np.abs(b).mean()


def test_out_of_range_codes_are_rejected(decoder: StepAudioDecoder, voice: VoiceConditioning) -> None:
    import pytest

    with pytest.raises(ValueError, match="5121"):
        decoder.decode(voice, [1, 2, 5121])
    with pytest.raises(ValueError):
        list(decoder.decode_stream(voice, iter([1, -1])))
