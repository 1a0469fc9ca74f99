"""services.common.codecs: streamed encoders into every HTTP output format, and the decoder of uploaded files.

Encoded streams are fed in 100 ms chunks (as synthesis arrives) and decoded back, by our own decoder and, where
libsndfile reads the format, by libsndfile too (a second, independent implementation: what a player would do).
"""

from __future__ import annotations

import io
import os
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.codecs import (
    OUTPUT_FORMATS,
    UnsupportedAudio,
    content_type,
    decode_to_pcm16,
    open_encoder,
)

RATE = 22050  # the embedded Piper voices' rate: the usual input
CHUNK_SECONDS = 0.1
CONTAINERS = ("wav", "mp3", "opus", "aac", "flac")  # the formats decode_to_pcm16 reads back


def priming_plus_frame(fmt: str, rate: int) -> int:
    """How many samples longer than its input a stream may decode: streamed MP3 and ADTS carry no gapless header,
    so decoders keep the encoder's priming (LAME: 1105 samples, AAC: 1024) and the padding of the last frame
    (MP3: 576 samples below 32 kHz, 1152 from 32 kHz up; AAC: 1024). Ogg Opus is trimmed exactly: up to one
    20 ms frame for resampling edges; WAV and FLAC are exact."""
    if fmt == "mp3":
        return 1105 + (1152 if rate >= 32000 else 576)
    if fmt == "aac":
        return 1024 + 1024
    return rate // 50 if fmt == "opus" else 0


def speech_like(seconds: float = 2.0, rate: int = RATE) -> np.ndarray:
    """A voiced sound: a gliding 120–180 Hz fundamental with harmonics to 4 kHz, syllable-rate loudness."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(150 + 30 * np.sin(2 * np.pi * 0.7 * t)) / rate
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 4000 // 180))
    envelope = 0.25 + 0.75 * np.abs(np.sin(2 * np.pi * 2.0 * t))
    signal = harmonics * envelope
    return (0.5 * signal / np.max(np.abs(signal)) * 32767).astype(np.int16)


def encode_in_chunks(fmt: str, samples: np.ndarray, rate: int = RATE) -> list[bytes]:
    """The pieces an HTTP response would send: one per 100 ms chunk, then finish()'s."""
    encoder = open_encoder(fmt, rate)
    step = int(rate * CHUNK_SECONDS)
    pieces = [encoder.encode(samples[i : i + step].tobytes()) for i in range(0, len(samples), step)]
    return [*pieces, encoder.finish()]


def best_correlation(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 3000) -> tuple[float, int]:
    """The Pearson correlation of ``decoded`` against ``reference`` at the lag (decoded later by 0..max_lag
    samples) that aligns them best, and that lag."""
    a = reference.astype(np.float64)
    b = decoded.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    cross = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)[: max_lag + 1]
    lag = int(np.argmax(cross))
    n = min(len(a), len(b) - lag)
    return float(np.corrcoef(a[:n], b[lag : lag + n])[0, 1]), lag


def raw_g711(data: bytes, subtype: str) -> np.ndarray:
    return soundfile.read(io.BytesIO(data), samplerate=8000, channels=1, format="RAW", subtype=subtype, dtype="int16")[
        0
    ]


# --- encoding -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", CONTAINERS)
def test_round_trip_keeps_duration_and_signal(fmt: str) -> None:
    samples = speech_like()
    decoded = decode_to_pcm16(b"".join(encode_in_chunks(fmt, samples)), RATE)

    assert decoded.dtype == np.int16 and decoded.ndim == 1
    extra = len(decoded) - len(samples)
    if fmt in ("mp3", "aac"):
        assert 0 <= extra <= priming_plus_frame(fmt, RATE)
    else:
        assert abs(extra) <= priming_plus_frame(fmt, RATE)
    if fmt in ("wav", "flac"):
        np.testing.assert_array_equal(decoded, samples)  # lossless, same rate: bit-exact
    else:
        correlation, lag = best_correlation(samples, decoded)
        assert correlation > 0.97, f"{fmt}: correlation {correlation:.3f}"
        assert lag == {"mp3": 1105, "aac": 1024, "opus": 0}[fmt]  # the encoder's priming, nothing else


def test_pcm_is_the_input_unchanged() -> None:
    samples = speech_like()
    assert b"".join(encode_in_chunks("pcm", samples)) == samples.tobytes()


@pytest.mark.parametrize(("fmt", "subtype"), [("mulaw", "ULAW"), ("alaw", "ALAW")])
def test_g711_is_raw_8khz(fmt: str, subtype: str) -> None:
    samples = speech_like()
    data = b"".join(encode_in_chunks(fmt, samples))

    decoded = raw_g711(data, subtype)
    assert len(data) == len(decoded)  # one byte a sample, no header
    assert abs(len(decoded) - 2.0 * 8000) <= 1
    reference = soxr.resample(samples.astype(np.float32), RATE, 8000)
    correlation, lag = best_correlation(reference, decoded, max_lag=40)
    assert correlation > 0.95 and lag <= 20, (correlation, lag)


@pytest.mark.parametrize(("fmt", "sndfile_format"), [("wav", "WAV"), ("mp3", "MP3"), ("opus", "OGG")])
def test_libsndfile_reads_the_stream(fmt: str, sndfile_format: str) -> None:
    """Not FLAC: a streamed FLAC cannot declare its length, and libsndfile takes that as 2**63-1 frames and fails
    (libsndfile/libsndfile#1038); the format allows it and FFmpeg reads it (the round-trip test)."""
    samples = speech_like()
    data = b"".join(encode_in_chunks(fmt, samples))

    info = soundfile.info(io.BytesIO(data))
    assert info.format == sndfile_format and info.channels == 1
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == {"opus": 48000}.get(fmt, RATE)
    reference = samples if fmt != "opus" else soxr.resample(samples.astype(np.float32), RATE, 48000)
    assert abs(len(decoded) - len(reference)) <= priming_plus_frame(fmt, rate)
    assert best_correlation(reference, decoded, max_lag=3000 if fmt == "mp3" else 960)[0] > 0.9


def test_wav_header_declares_unknown_length() -> None:
    """Sizes a streamed WAV cannot know are 0xFFFFFFFF, which readers take as "until the end of the data"."""
    samples = speech_like(seconds=1.0)
    pieces = encode_in_chunks("wav", samples)
    data = b"".join(pieces)

    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff" and data[8:12] == b"WAVE"
    data_chunk = data.index(b"data")
    assert data[data_chunk + 4 : data_chunk + 8] == b"\xff\xff\xff\xff"
    assert data_chunk + 8 == 44  # a plain 44-byte header: no LIST/encoder chunk before the samples
    np.testing.assert_array_equal(soundfile.read(io.BytesIO(data), dtype="int16")[0], samples)
    # A player holding only the first piece can already read the header and the first samples.
    head, rate = soundfile.read(io.BytesIO(pieces[0]), dtype="int16")
    assert rate == RATE and len(head) > 0


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_streams_start_before_finish(fmt: str) -> None:
    """Audio leaves the encoder while input still arrives, and what left decodes on its own."""
    samples = speech_like(seconds=1.0)
    pieces = encode_in_chunks(fmt, samples)
    *streamed, _last = pieces

    assert streamed[0], f"{fmt}: nothing after the first 100 ms chunk"
    assert sum(1 for piece in streamed if piece) >= len(streamed) - 1
    prefix = b"".join(streamed)
    if fmt in CONTAINERS:
        assert len(decode_to_pcm16(prefix, RATE)) > 0.5 * RATE
    else:
        assert len(prefix) > 0.5 * len(b"".join(pieces))


@pytest.mark.parametrize("fmt", ("mp3", "opus", "aac"))
def test_compressed_first_piece_is_playable(fmt: str) -> None:
    """The first two pieces (200 ms of input) already decode to audio: a player can start there."""
    pieces = encode_in_chunks(fmt, speech_like(seconds=1.0))
    assert len(decode_to_pcm16(pieces[0] + pieces[1], RATE)) > 0


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 44100, 48000, 11000])
@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_every_input_rate(fmt: str, rate: int) -> None:
    samples = speech_like(seconds=0.5, rate=rate)
    encoder = open_encoder(fmt, rate)
    data = encoder.encode(samples.tobytes()) + encoder.finish()

    expected_rate = {"opus": 48000, "mulaw": 8000, "alaw": 8000}.get(fmt, rate)
    if fmt in ("mp3", "aac") and rate == 11000:
        expected_rate = 11025  # not a rate of these codecs: the next one up
    assert encoder.output_sample_rate_hz == expected_rate
    if fmt in CONTAINERS:
        extra_seconds = len(decode_to_pcm16(data, 16000)) / 16000 - 0.5
        assert -0.001 <= extra_seconds <= priming_plus_frame(fmt, expected_rate) / expected_rate + 0.001
    elif fmt == "pcm":
        assert data == samples.tobytes()
    else:
        assert abs(len(data) - 0.5 * 8000) <= 1


def test_content_types() -> None:
    assert {fmt: content_type(fmt) for fmt in OUTPUT_FORMATS} == {
        "pcm": "audio/pcm",
        "wav": "audio/wav",
        "mp3": "audio/mpeg",
        "opus": "audio/ogg; codecs=opus",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "mulaw": "audio/basic",
        "alaw": "audio/x-alaw-basic",
    }
    assert open_encoder("mp3", RATE).content_type == "audio/mpeg"


def test_encoder_misuse_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown audio format 'ogg'"):
        open_encoder("ogg", RATE)
    with pytest.raises(ValueError, match="unknown audio format"):
        content_type("wma")
    with pytest.raises(ValueError, match="positive"):
        open_encoder("wav", 0)
    encoder = open_encoder("mp3", RATE)
    with pytest.raises(ValueError, match="whole 2-byte samples"):
        encoder.encode(b"\x00\x01\x02")
    encoder.finish()
    with pytest.raises(ValueError, match="finished"):
        encoder.encode(b"\x00\x00")
    with pytest.raises(ValueError, match="finished"):
        encoder.finish()
    encoder.close()  # idempotent


def test_an_abandoned_encoder_closes() -> None:
    encoder = open_encoder("opus", RATE)
    encoder.encode(speech_like(seconds=0.3).tobytes())
    encoder.close()
    encoder.close()


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_encoding_is_far_faster_than_real_time(fmt: str) -> None:
    """10 s of speech in 100 ms chunks, open to finish: a few % of real time when measured alone; the bound is
    loose because tests share the CPUs."""
    samples = speech_like(seconds=10.0)
    started = time.perf_counter()
    encode_in_chunks(fmt, samples)
    assert time.perf_counter() - started < 2.5  # a quarter of real time


# --- decoding -------------------------------------------------------------------------------------------------


def container_file(muxer: str, encoder: str, seconds: float = 1.0, rate: int = 48000) -> bytes:
    """A whole file as another program would write it (seekable output, headers patched at the end)."""
    frame = av.AudioFrame.from_ndarray(speech_like(seconds, rate).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
    output = io.BytesIO()
    with av.open(output, "w", format=muxer) as container:
        stream = container.add_stream(encoder, rate=rate, layout=frame.layout.name)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return output.getvalue()


@pytest.mark.parametrize(
    ("muxer", "encoder"),
    [
        ("mp4", "aac"),
        ("ipod", "aac"),
        ("webm", "libopus"),
        ("matroska", "flac"),
        ("ogg", "flac"),
        ("aiff", "pcm_s16be"),
    ],
)
def test_decodes_what_browsers_and_recorders_send(muxer: str, encoder: str) -> None:
    decoded = decode_to_pcm16(container_file(muxer, encoder), 16000)
    assert abs(len(decoded) - 16000) <= 1024 * 16000 // 48000 + 1
    reference = soxr.resample(speech_like(1.0, 48000).astype(np.float32), 48000, 16000)
    assert best_correlation(reference, decoded)[0] > 0.9


def test_stereo_is_mixed_to_mono_and_resampled() -> None:
    output = io.BytesIO()
    left = speech_like(1.0, 44100)
    soundfile.write(output, np.stack([left, left], axis=1), 44100, format="WAV", subtype="PCM_16")
    decoded = decode_to_pcm16(output.getvalue(), 16000)
    assert abs(len(decoded) - 16000) <= 1
    reference = soxr.resample(left.astype(np.float32), 44100, 16000)
    correlation, lag = best_correlation(reference, decoded, max_lag=10)
    assert correlation > 0.99 and lag <= 2
    assert 0.5 < np.abs(decoded).max() / np.abs(reference).max() < 1.5  # mixed, not summed into clipping


def test_decodes_real_speech_after_a_lossy_round_trip(shared_data) -> None:
    speech, rate = soundfile.read(shared_data / "Tingting_prompt.wav", dtype="int16")
    speech = soxr.resample(speech, rate, RATE)
    for fmt in ("mp3", "opus", "aac"):
        decoded = decode_to_pcm16(b"".join(encode_in_chunks(fmt, speech)), RATE)
        correlation, _ = best_correlation(speech, decoded)
        assert correlation > 0.95, f"{fmt}: {correlation:.3f}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (os.urandom(4096), "not audio this service can read"),
        (b"Lorem ipsum dolor sit amet. " * 100, "not audio this service can read"),
        (b"\xff\xfb\x90\x00" + bytes(400), "no decodable audio|not audio this service can read"),
    ],
    ids=["empty", "random", "text", "mp3-sync-then-zeros"],
)
def test_garbage_is_unsupported_audio(data: bytes, message: str) -> None:
    with pytest.raises(UnsupportedAudio, match=message):
        decode_to_pcm16(data)


@pytest.mark.parametrize("fmt", CONTAINERS)
@pytest.mark.parametrize("keep", [8, 40])
def test_a_file_cut_inside_its_header_is_unsupported(fmt: str, keep: int) -> None:
    data = b"".join(encode_in_chunks(fmt, speech_like(seconds=0.5)))
    with pytest.raises(UnsupportedAudio):
        decode_to_pcm16(data[:keep])


@pytest.mark.parametrize("fmt", CONTAINERS)
def test_a_file_cut_mid_way_yields_what_precedes_the_cut(fmt: str) -> None:
    data = b"".join(encode_in_chunks(fmt, speech_like(seconds=2.0)))
    decoded = decode_to_pcm16(data[: len(data) // 2], RATE)
    assert 0.6 * RATE < len(decoded) < 1.4 * RATE


def test_a_file_without_audio_is_unsupported() -> None:
    output = io.BytesIO()
    with av.open(output, "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(UnsupportedAudio, match="no audio stream"):
        decode_to_pcm16(output.getvalue())


def test_an_unknown_codec_in_a_known_container_is_unsupported() -> None:
    output = io.BytesIO()
    soundfile.write(output, speech_like(0.5, 8000), 8000, format="WAV", subtype="PCM_16")
    data = bytearray(output.getvalue())
    data[20:22] = (0x1234).to_bytes(2, "little")  # the fmt chunk's format tag: no codec has it
    with pytest.raises(UnsupportedAudio, match="codec is not supported"):
        decode_to_pcm16(bytes(data))


def test_formats_outside_the_allowlist_are_refused() -> None:
    """FFmpeg reads VOC files, and playlists that name other files; uploads may be neither."""
    output = io.BytesIO()
    soundfile.write(output, speech_like(0.5, 16000), 16000, format="VOC", subtype="PCM_16")
    with av.open(io.BytesIO(output.getvalue())) as container:
        assert container.format.name == "voc"  # FFmpeg itself would read it
    with pytest.raises(UnsupportedAudio):
        decode_to_pcm16(output.getvalue())
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n"
    with pytest.raises(UnsupportedAudio):
        decode_to_pcm16(playlist)
    with pytest.raises(UnsupportedAudio):
        decode_to_pcm16(b"ffconcat version 1.0\nfile /etc/hostname\n")


def test_decoded_duration_is_bounded() -> None:
    """A minute of silence is a few kB of FLAC; with a 10 s bound it is refused, naming the bound."""
    encoder = open_encoder("flac", 16000)
    silence = bytes(2 * 16000)
    data = b"".join(encoder.encode(silence) for _ in range(60)) + encoder.finish()
    assert len(data) < 40_000
    with pytest.raises(UnsupportedAudio, match="longer than the limit of 10 seconds"):
        decode_to_pcm16(data, 16000, max_seconds=10)
    assert len(decode_to_pcm16(data, 16000, max_seconds=61)) == 60 * 16000


def test_decode_rejects_a_bad_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        decode_to_pcm16(b"RIFF", 0)


VALID_FILES = {fmt: b"".join(encode_in_chunks(fmt, speech_like(seconds=0.3))) for fmt in CONTAINERS}


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(CONTAINERS),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)), max_size=6),
    cut=st.floats(0.05, 1.0),
)
def test_damaged_files_decode_or_raise_unsupported_audio(fmt: str, edits, cut: float) -> None:
    """Overwritten bytes and cuts anywhere: the result is int16 audio within the bound, or UnsupportedAudio."""
    data = bytearray(VALID_FILES[fmt])
    for position, patch in edits:
        start = int(position * len(data))
        data[start : start + len(patch)] = patch
    data = bytes(data[: max(1, int(cut * len(data)))])
    try:
        decoded = decode_to_pcm16(data, 16000, max_seconds=5)
    except UnsupportedAudio:
        return
    assert decoded.dtype == np.int16 and 0 < len(decoded) <= 5 * 16000


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_raise_unsupported_audio(data: bytes) -> None:
    try:
        decoded = decode_to_pcm16(data, 16000, max_seconds=5)
    except UnsupportedAudio:
        return
    assert decoded.dtype == np.int16 and len(decoded) <= 5 * 16000
