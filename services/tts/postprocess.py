"""Audio post-processing of synthesised speech: tempo (speed without pitch change), pitch (without
tempo change) and volume.

The reference Step-Audio applies speed and volume after synthesis with sox (``tempo`` for
``speed_ratio`` and ``vol``). We do the same in process: tempo with WSOLA from ``audiotsm`` (MIT, pure
numpy), chosen over librosa's phase vocoder (phasey on speech: a worse round-trip log-mel distance)
and pytsmod (GPL-3.0, same quality) — measurements in docs/voices.md. Pitch is the same WSOLA
stretching the audio by the pitch ratio, then a soxr resampler playing it back that much faster:
the classic time-stretch + resample shift, chosen over WORLD, Praat PSOLA, Signalsmith Stretch,
Rubber Band and STFT shifters because it streams with output identical to the offline result and
keeps intelligibility over its range (measurements in docs/decisions.md and docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import soxr

from services.common.controls import MAX_PITCH, MIN_PITCH

MIN_SPEED = 0.5
MAX_SPEED = 2.0
MIN_VOLUME = 0.1
MAX_VOLUME = 2.0
# Soft limiter knee: samples up to this magnitude pass unchanged; above it they bend smoothly
# towards (never past) full scale.
_KNEE = 0.9


def _frame_length(rate: int) -> int:
    """WSOLA frame of ~40-50 ms (a power of two), the range that suits speech."""
    return 1024 if rate <= 24000 else 2048


def _tsm(rate: int, factor: float):
    from audiotsm import wsola  # imported on first use: only engines that change speed need it

    return wsola(1, speed=factor, frame_length=_frame_length(rate))


def _io():
    from audiotsm.io.array import ArrayReader, ArrayWriter

    return ArrayReader, ArrayWriter


def _check_factor(factor: float) -> None:
    if not MIN_SPEED <= factor <= MAX_SPEED:
        raise ValueError(f"speed factor {factor:g} is out of range {MIN_SPEED:g}..{MAX_SPEED:g}")


def change_speed(samples: np.ndarray, rate: int, factor: float) -> np.ndarray:
    """Play ``samples`` ``factor`` times faster (2.0: half as long) at the same pitch.

    Mono float32 in, mono float32 out, ``round(len / factor)`` samples long. ``factor`` 1.0
    returns the input unchanged. Raises ValueError outside 0.5..2.0.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if factor == 1.0 or samples.size == 0:
        return samples
    _check_factor(factor)
    frame = _frame_length(rate)
    # Pad so WSOLA's last frames cover the real end, then cut to the exact length.
    padded = np.concatenate([samples, np.zeros(2 * frame, dtype=np.float32)])
    ArrayReader, ArrayWriter = _io()
    writer = ArrayWriter(1)
    _tsm(rate, factor).run(ArrayReader(padded[None, :]), writer)
    wanted = round(samples.size / factor)
    out = writer.data[0].astype(np.float32, copy=False)[:wanted]
    if out.size < wanted:
        out = np.concatenate([out, np.zeros(wanted - out.size, dtype=np.float32)])
    return out


class SpeedChanger:
    """Streaming form of :func:`change_speed` with no seams between chunks: ``push`` each
    chunk as it arrives, then ``finish`` for the tail. Output lags input by about a frame."""

    def __init__(self, rate: int, factor: float) -> None:
        _check_factor(factor)
        self._factor = factor
        self._frame = _frame_length(rate)
        self._tsm = _tsm(rate, factor) if factor != 1.0 else None
        self._in = 0
        self._out = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        if self._tsm is None or samples.size == 0:
            return samples
        self._in += samples.size
        ArrayReader, ArrayWriter = _io()
        writer = ArrayWriter(1)
        self._tsm.run(ArrayReader(samples[None, :]), writer, flush=False)
        out = writer.data[0].astype(np.float32, copy=False)
        self._out += out.size
        return out

    def finish(self) -> np.ndarray:
        """The rest of the output; in total ``round(samples pushed / factor)`` samples."""
        if self._tsm is None:
            return np.zeros(0, dtype=np.float32)
        ArrayReader, ArrayWriter = _io()
        writer = ArrayWriter(1)
        self._tsm.run(ArrayReader(np.zeros((1, 2 * self._frame), dtype=np.float32)), writer)
        remaining = max(0, round(self._in / self._factor) - self._out)
        tail = writer.data[0].astype(np.float32, copy=False)[:remaining]
        if tail.size < remaining:
            tail = np.concatenate([tail, np.zeros(remaining - tail.size, dtype=np.float32)])
        self._out += tail.size
        return tail


def _check_semitones(semitones: float) -> None:
    if not MIN_PITCH <= semitones <= MAX_PITCH:
        raise ValueError(f"pitch shift {semitones:g} semitones is out of range {MIN_PITCH:g}..{MAX_PITCH:g}")


class PitchShifter:
    """Streaming pitch shift by ``semitones`` at the same tempo, with no seams between chunks: ``push``
    each chunk as it arrives, then ``finish`` for the tail; in total exactly as many samples come out
    as went in. WSOLA makes the audio 2^(semitones/12) times longer at the same pitch, and a soxr
    stream resampler plays it back that much faster, which raises (or lowers) every frequency by the
    ratio. Both keep their state between chunks, so any chunking gives the output of one whole push
    (:func:`shift_pitch`). Formants move with the pitch, which is why the range is kept to ±4
    semitones. Output lags input by about a WSOLA frame. Raises ValueError outside the range."""

    def __init__(self, rate: int, semitones: float) -> None:
        _check_semitones(semitones)
        self._frame = _frame_length(rate)
        self._in = 0
        self._out = 0
        self._tsm = None
        if semitones:
            ratio = 2.0 ** (semitones / 12.0)
            self._tsm = _tsm(rate, 1.0 / ratio)
            self._resampler = soxr.ResampleStream(rate * ratio, rate, 1, dtype="float32", quality="HQ")

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        if self._tsm is None or samples.size == 0:
            return samples
        self._in += samples.size
        ArrayReader, ArrayWriter = _io()
        writer = ArrayWriter(1)
        self._tsm.run(ArrayReader(samples[None, :]), writer, flush=False)
        out = self._resampler.resample_chunk(writer.data[0].astype(np.float32))
        self._out += out.size
        return out

    def finish(self) -> np.ndarray:
        """The rest of the output."""
        if self._tsm is None:
            return np.zeros(0, dtype=np.float32)
        ArrayReader, ArrayWriter = _io()
        writer = ArrayWriter(1)
        self._tsm.run(ArrayReader(np.zeros((1, 2 * self._frame), dtype=np.float32)), writer)
        tail = self._resampler.resample_chunk(writer.data[0].astype(np.float32), last=True)
        remaining = max(0, self._in - self._out)
        tail = tail[:remaining]
        if tail.size < remaining:
            tail = np.concatenate([tail, np.zeros(remaining - tail.size, dtype=np.float32)])
        self._out += tail.size
        return tail


def shift_pitch(samples: np.ndarray, rate: int, semitones: float) -> np.ndarray:
    """``samples`` ``semitones`` higher (negative: lower) at the same tempo and length. Mono float32 in
    and out; 0 returns the input unchanged. Raises ValueError outside MIN_PITCH..MAX_PITCH."""
    shifter = PitchShifter(rate, semitones)
    return np.concatenate([shifter.push(samples), shifter.finish()])


def apply_volume(samples: np.ndarray, factor: float) -> np.ndarray:
    """Scale by ``factor`` without clipping: samples that would pass ±``0.9`` are bent smoothly
    (tanh knee) so the result stays within ±1. Stateless per sample, so it is safe on a stream."""
    samples = np.asarray(samples, dtype=np.float32)
    if factor == 1.0:
        return samples
    scaled = samples * np.float32(factor)
    over = np.abs(scaled) > _KNEE
    if over.any():
        headroom = 1.0 - _KNEE
        magnitude = np.abs(scaled[over])
        bent = _KNEE + headroom * np.tanh((magnitude - _KNEE) / headroom)
        scaled[over] = np.sign(scaled[over]) * bent
    return scaled.astype(np.float32, copy=False)
