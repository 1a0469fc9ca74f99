"""Audio decoding, validation and conversion (numpy; no protobuf here)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from services.common.errors import InvalidArgument

MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 48000
_CONTAINER_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS")


@dataclass(frozen=True)
class DeclaredFormat:
    """What the caller says the bytes are. ``encoding``: "pcm16", "wav" or "" (infer)."""

    encoding: str
    sample_rate_hz: int = 0
    channels: int = 0


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float
    default_sample_rate_hz: int = 16000


def check_sample_rate(sample_rate_hz: int, what: str = "sample_rate_hz") -> None:
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise InvalidArgument(
            f"{what} {sample_rate_hz} is out of range: use {MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ} Hz"
        )


def _check_channels(channels: int) -> int:
    channels = channels or 1
    if channels not in (1, 2):
        raise InvalidArgument(f"channels {channels} is not supported: send mono (1) or stereo (2)")
    return channels


def decode_pcm16(content: bytes, sample_rate_hz: int, channels: int) -> np.ndarray:
    """Raw PCM16 LE → float32 mono. Rejects bytes that are a container, or not whole frames."""
    channels = _check_channels(channels)
    if content[:4] in _CONTAINER_MAGIC:
        raise InvalidArgument("audio is declared PCM16 but looks like a WAV/FLAC/OGG file: set encoding WAV")
    if len(content) % (2 * channels):
        raise InvalidArgument(f"PCM16 audio must be whole frames of {2 * channels} bytes; got {len(content)} bytes")
    samples = np.frombuffer(content, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples


def decode_audio(content: bytes, declared: DeclaredFormat, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """Decode a whole clip to float32 mono; returns (samples, sample_rate_hz).

    Raises InvalidArgument with a message a user can act on for every kind of bad input.
    """
    if not content:
        raise InvalidArgument("audio is empty: send 16-bit PCM or a WAV file")
    encoding = declared.encoding or ("wav" if content[:4] in _CONTAINER_MAGIC else "")
    if encoding == "pcm16":
        rate = declared.sample_rate_hz or limits.default_sample_rate_hz
        check_sample_rate(rate)
        samples = decode_pcm16(content, rate, declared.channels)
    elif encoding == "wav":
        try:
            data, rate = soundfile.read(io.BytesIO(content), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
            raise InvalidArgument(f"audio is not a readable WAV/FLAC/OGG file ({error})") from None
        check_sample_rate(rate, "the file's sample rate")
        if declared.sample_rate_hz and declared.sample_rate_hz != rate:
            raise InvalidArgument(
                f"declared sample_rate_hz {declared.sample_rate_hz} does not match the file's {rate} Hz"
            )
        if declared.channels and declared.channels != data.shape[1]:
            raise InvalidArgument(f"declared channels {declared.channels} does not match the file's {data.shape[1]}")
        _check_channels(data.shape[1])
        samples = data.mean(axis=1)
    else:
        raise InvalidArgument(
            "audio encoding is not set and the bytes are not a WAV/FLAC/OGG file: "
            "set encoding PCM16 (with sample_rate_hz) or send a WAV file"
        )
    check_samples(samples, rate, limits)
    return samples, rate


def check_samples(samples: np.ndarray, sample_rate_hz: int, limits: AudioLimits) -> None:
    if samples.size == 0:
        raise InvalidArgument("audio holds no samples")
    duration = samples.size / sample_rate_hz
    if duration > limits.max_seconds:
        raise InvalidArgument(
            f"audio is {duration:.1f} s long; the limit is {limits.max_seconds:g} s: send a shorter clip"
        )
    if not np.isfinite(samples).all():
        raise InvalidArgument("audio contains NaN or infinite samples")


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    if from_hz == to_hz or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, from_hz, to_hz).astype(np.float32, copy=False)


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def to_wav_bytes(samples: np.ndarray, sample_rate_hz: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate_hz, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class StreamResampler:
    """Resamples a stream chunk by chunk with no seams (soxr keeps the filter state)."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        self._stream = soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32") if from_hz != to_hz else None

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples.astype(np.float32, copy=False)
        return self._stream.resample_chunk(samples.astype(np.float32, copy=False), last=last)
