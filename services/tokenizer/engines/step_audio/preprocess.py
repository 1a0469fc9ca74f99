"""Input preprocessing as the reference: energy normalisation and optional silence trimming."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
PEAK_FLOOR = 0.01
PEAK_TARGET = 0.999


def energy_norm(samples: np.ndarray, peak: float | None = None) -> np.ndarray:
    """x / max(peak, 0.01) · 0.999, with ``peak`` = max |x| unless given (streaming: the running peak)."""
    if peak is None:
        peak = float(np.abs(samples).max()) if len(samples) else 0.0
    return (samples * (PEAK_TARGET / max(peak, PEAK_FLOOR))).astype(np.float32)


def trim_silence(
    samples: np.ndarray,
    top_db: float = 20.0,
    frame: int = 512,
    hop: int = 128,
    before: float = 0.05,
    after: float = 0.22,
) -> np.ndarray:
    """Cut leading/trailing audio quieter than ``top_db`` below the loudest frame (RMS, centred
    frames as librosa.effects.trim), keeping ``before``/``after`` seconds, boundaries on 240 samples."""
    if len(samples) == 0:
        return samples
    padded = np.pad(samples, frame // 2)
    count = 1 + (len(padded) - frame) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop][:count]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    ref = rms.max()
    if ref <= 0:
        return samples[:0]
    db = 20.0 * np.log10(np.maximum(rms, 1e-10) / ref)
    loud = np.flatnonzero(db > -top_db)
    start = int(loud[0]) * hop
    end = min(len(samples), (int(loud[-1]) + 1) * hop)
    start = max(0, start - int(before * SAMPLE_RATE)) // 240 * 240
    end = min(len(samples), -(-(end + int(after * SAMPLE_RATE)) // 240) * 240)
    return samples[start:end]
