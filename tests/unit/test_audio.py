import io

import numpy as np
import pytest
import soundfile

from services.common.audio import AudioLimits, DeclaredFormat, StreamResampler, decode_audio, resample
from services.common.errors import InvalidArgument

LIMITS = AudioLimits(max_seconds=2.0)


def wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def tone(seconds: float, rate: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_wav_is_decoded_with_its_own_rate_and_stereo_is_mixed() -> None:
    stereo = np.stack([tone(0.5, 22050), tone(0.5, 22050)], axis=1)
    samples, rate = decode_audio(wav(stereo, 22050), DeclaredFormat("wav"), LIMITS)
    assert rate == 22050 and samples.shape == (11025,)
    assert np.allclose(samples, tone(0.5, 22050), atol=1e-3)


def test_pcm16_round_trips_and_encoding_is_inferred_from_a_container() -> None:
    pcm = (tone(0.25, 16000) * 32767).astype("<i2").tobytes()
    samples, rate = decode_audio(pcm, DeclaredFormat("pcm16", 16000), LIMITS)
    assert rate == 16000 and len(samples) == 4000
    samples, rate = decode_audio(wav(tone(0.25, 8000), 8000), DeclaredFormat(""), LIMITS)
    assert rate == 8000 and len(samples) == 2000


@pytest.mark.parametrize(
    ("content", "declared", "message"),
    [
        (b"", DeclaredFormat("wav"), "empty"),
        (b"this is not audio at all" * 10, DeclaredFormat("wav"), "not a readable"),
        (b"this is not audio at all" * 10, DeclaredFormat(""), "encoding is not set"),
        (b"\x00\x01\x02", DeclaredFormat("pcm16", 16000), "whole frames"),
        (b"\x00\x00" * 100, DeclaredFormat("pcm16", 1000), "out of range"),
        (wav(tone(0.2, 16000), 16000), DeclaredFormat("wav", 44100), "does not match"),
        (wav(tone(0.2, 16000), 16000), DeclaredFormat("pcm16", 16000), "looks like a WAV"),
        (wav(tone(3.0, 16000), 16000), DeclaredFormat("wav"), "limit is 2 s"),
        (wav(np.full(100, np.nan, dtype=np.float32), 16000, "FLOAT"), DeclaredFormat("wav"), "NaN"),
    ],
)
def test_bad_audio_is_rejected_with_an_actionable_message(
    content: bytes, declared: DeclaredFormat, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_audio(content, declared, LIMITS)


def test_stream_resampler_matches_one_shot_resampling() -> None:
    signal = tone(1.0, 44100)
    resampler = StreamResampler(44100, 16000)
    pieces = [resampler.push(signal[i : i + 3000]) for i in range(0, len(signal), 3000)]
    pieces.append(resampler.push(np.zeros(0, dtype=np.float32), last=True))
    streamed = np.concatenate(pieces)
    whole = resample(signal, 44100, 16000)
    assert abs(len(streamed) - len(whole)) <= 2
    n = min(len(streamed), len(whole))
    assert np.max(np.abs(streamed[100 : n - 100] - whole[100 : n - 100])) < 1e-3
