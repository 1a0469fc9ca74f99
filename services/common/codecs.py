"""Audio formats for HTTP callers: streaming encoders from PCM16 and a decoder of whole files, both through PyAV.

PyAV binds FFmpeg's libraries: every codec here is FFmpeg's (libopus, libmp3lame, the native AAC, FLAC and G.711
coders), none is written by hand. Everything is CPU-bound and blocking: callers on an event loop run it through
``services.common.concurrency.run_blocking``.

Encoders are incremental: PCM16 mono at any rate goes in, and container bytes come out as soon as whole frames
(Ogg pages for Opus) exist, so a player can start on the first piece while the rest is still being synthesised.
The output is written to a non-seekable sink, so muxers never go back to patch a header: WAV carries 0xFFFFFFFF
("unknown") sizes, FLAC an unknown total length, MP3 and ADTS AAC no gapless header (decoders there keep the
encoder's priming delay, about one or two frames of silence at the start).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.container
import numpy as np

OUTPUT_FORMATS = ("pcm", "wav", "mp3", "opus", "aac", "flac", "mulaw", "alaw")
DEFAULT_MAX_DECODED_SECONDS = 600.0

# Demuxers decode_to_pcm16 may use. A whitelist, because FFmpeg probes hundreds of formats and some (HLS, concat)
# follow references in the file to other files or URLs. "mov" is the MP4/M4A demuxer, "matroska" also reads WebM.
_DEMUXERS = "wav,w64,aiff,caf,mp3,ogg,flac,mov,matroska,aac"
_READABLE = "WAV, MP3, Ogg (Opus/Vorbis), FLAC, M4A/MP4 (AAC), WebM/Matroska, AIFF or CAF"
# bitexact: no encoder/version tag (WAV LIST chunk, ID3 TSSE frame, FLAC vendor string) before the audio;
# flush_packets: each muxed packet goes to the sink at once instead of waiting for FFmpeg's 32 kB I/O buffer.
_FORMAT_FLAGS = av.container.Flags.bitexact.value | av.container.Flags.flush_packets.value


class UnsupportedAudio(ValueError):
    """Bytes that are no decodable audio, or more of it than allowed; the message is meant for the user."""


@dataclass(frozen=True)
class _Format:
    content_type: str
    muxer: str
    encoder: str
    rates: tuple[int, ...] = ()  # output rates allowed; () = any rate the encoder takes (see _output_rate)
    bit_rate: int = 0
    muxer_options: dict[str, str] = field(default_factory=dict)


_FORMATS = {
    "pcm": _Format("audio/pcm", "s16le", "pcm_s16le"),
    "wav": _Format("audio/wav", "wav", "pcm_s16le"),
    "mp3": _Format("audio/mpeg", "mp3", "libmp3lame", bit_rate=64_000),
    # Ogg Opus is always 48 kHz on decode; 40 ms pages give each 100 ms of input at least one page to send.
    "opus": _Format(
        "audio/ogg; codecs=opus", "ogg", "libopus", (48000,), bit_rate=32_000, muxer_options={"page_duration": "40000"}
    ),
    "aac": _Format("audio/aac", "adts", "aac", bit_rate=64_000),
    "flac": _Format("audio/flac", "flac", "flac", muxer_options={"metadata_header_padding": "0"}),
    "mulaw": _Format("audio/basic", "mulaw", "pcm_mulaw", (8000,)),
    "alaw": _Format("audio/x-alaw-basic", "alaw", "pcm_alaw", (8000,)),
}


def _format(fmt: str) -> _Format:
    try:
        return _FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown audio format {fmt!r}: use one of {', '.join(OUTPUT_FORMATS)}") from None


def content_type(fmt: str) -> str:
    """The HTTP Content-Type of ``fmt`` (one of OUTPUT_FORMATS)."""
    return _format(fmt).content_type


def _output_rate(spec: _Format, sample_rate_hz: int) -> int:
    """The input rate if the encoder takes it, else the next rate up it takes (else its highest)."""
    rates = spec.rates or tuple(av.codec.Codec(spec.encoder, "w").audio_rates or ())
    if not rates or sample_rate_hz in rates:
        return sample_rate_hz
    higher = [rate for rate in rates if rate >= sample_rate_hz]
    return min(higher) if higher else max(rates)


def _sample_format(encoder: str) -> str:
    """The encoder's 16-bit sample format if it has one (no conversion of our input), else its first."""
    names = [sample_format.name for sample_format in av.codec.Codec(encoder, "w").audio_formats or ()]
    return next((name for name in ("s16", "s16p") if name in names), names[0] if names else "s16")


class _Drain:
    """A write-only, non-seekable file for a muxer; ``take`` returns and forgets what was written so far."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def write(self, data: bytes) -> int:
        self._pending += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._pending)
        self._pending.clear()
        return data


class StreamEncoder:
    """PCM16 mono in, pieces of one ``fmt`` stream out. ``encode`` may return b""; ``finish`` ends the stream.

    Not thread-safe: one caller at a time (run_blocking calls made one after another are fine).
    """

    def __init__(self, fmt: str, sample_rate_hz: int) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        spec = _format(fmt)
        self.format = fmt
        self.input_sample_rate_hz = sample_rate_hz
        self.output_sample_rate_hz = _output_rate(spec, sample_rate_hz)
        self._time_base = Fraction(1, sample_rate_hz)
        self._samples_in = 0
        self._closed = False
        self._sink = _Drain()
        self._container = av.open(self._sink, "w", format=spec.muxer, container_options=spec.muxer_options)
        self._container.flags |= _FORMAT_FLAGS
        self._stream = self._container.add_stream(
            spec.encoder, rate=self.output_sample_rate_hz, layout="mono", format=_sample_format(spec.encoder)
        )
        if spec.bit_rate:
            self._stream.codec_context.bit_rate = spec.bit_rate
        # The header goes out with the first piece, before any audio frame is complete.
        self._container.start_encoding()

    @property
    def content_type(self) -> str:
        return content_type(self.format)

    def encode(self, pcm16: bytes) -> bytes:
        """Feed little-endian 16-bit mono samples; return the bytes of the frames completed so far."""
        self._check_open()
        if len(pcm16) % 2:
            raise ValueError(f"PCM16 input must be whole 2-byte samples, got {len(pcm16)} bytes")
        if pcm16:
            samples = np.frombuffer(pcm16, dtype="<i2").astype(np.int16, copy=False).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = self.input_sample_rate_hz
            frame.time_base = self._time_base
            frame.pts = self._samples_in
            self._samples_in += samples.shape[1]
            self._container.mux(self._stream.encode(frame))
        return self._sink.take()

    def finish(self) -> bytes:
        """Flush the encoder and the muxer; return the last bytes of the stream. The encoder is closed after."""
        self._check_open()
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self.close()
        return self._sink.take()

    def close(self) -> None:
        """Release the FFmpeg contexts (for a stream abandoned before ``finish``); safe to call twice."""
        if not self._closed:
            self._closed = True
            self._container.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"this {self.format} encoder is finished")


def open_encoder(fmt: str, sample_rate_hz: int) -> StreamEncoder:
    """An incremental encoder of PCM16 mono at ``sample_rate_hz`` into ``fmt`` (one of OUTPUT_FORMATS)."""
    return StreamEncoder(fmt, sample_rate_hz)


def decode_to_pcm16(
    data: bytes, sample_rate_hz: int = 16000, *, max_seconds: float = DEFAULT_MAX_DECODED_SECONDS
) -> np.ndarray:
    """Decode a whole audio file (any container/codec of _READABLE) to mono int16 samples at ``sample_rate_hz``.

    Raises UnsupportedAudio, with a message for the user, for bytes that are no audio file, a file without an
    audio stream or without one decodable frame (empty, truncated in its header, corrupt), and for audio longer
    than ``max_seconds`` (checked while decoding, so a small upload cannot expand to hours of samples). Packets
    that fail to decode are skipped, as FFmpeg's own tools do: a file cut off mid-way yields what precedes the cut.
    """
    if sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    if not data:
        raise UnsupportedAudio(f"the audio file is empty: send {_READABLE}")
    try:
        with av.open(
            io.BytesIO(data), "r", options={"format_whitelist": _DEMUXERS}, metadata_errors="replace"
        ) as container:
            if not container.streams.audio:
                raise UnsupportedAudio("the file has no audio stream")
            stream = container.streams.audio[0]
            if stream.codec_context is None:  # FFmpeg has no decoder for the codec the file names
                raise UnsupportedAudio(f"the file's audio codec is not supported: send {_READABLE}")
            pieces = _decode_stream(container, stream, sample_rate_hz, max_seconds)
    except av.FFmpegError as error:
        raise UnsupportedAudio(
            f"the file is not audio this service can read ({error.strerror}): send {_READABLE}"
        ) from None
    if not pieces:
        raise UnsupportedAudio("the file contains no decodable audio: it is empty, truncated or corrupt")
    return np.concatenate(pieces)


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream, sample_rate_hz: int, max_seconds: float
) -> list[np.ndarray]:
    max_samples = int(max_seconds * sample_rate_hz)
    pieces: list[np.ndarray] = []
    total = 0
    converter = _MonoConverter(sample_rate_hz)
    for packet in container.demux(stream):
        try:
            frames = stream.codec_context.decode(packet)
        except av.InvalidDataError:
            continue  # a corrupt or cut-off packet: skip it, as ffmpeg does
        for frame in frames:
            for piece in converter.convert(frame):
                pieces.append(piece)
                total += piece.size
                if total > max_samples:
                    raise UnsupportedAudio(f"the audio is longer than the limit of {max_seconds:g} seconds")
    pieces.extend(converter.flush())
    return [piece for piece in pieces if piece.size]


class _MonoConverter:
    """Decoded frames → int16 mono at one rate; starts over when the stream changes rate or layout mid-way
    (chained Ogg streams, MP3 files glued together), which a single resampler refuses."""

    def __init__(self, sample_rate_hz: int) -> None:
        self._sample_rate_hz = sample_rate_hz
        self._resampler: av.AudioResampler | None = None
        self._shape: tuple[str, str, int] | None = None

    def convert(self, frame: av.AudioFrame) -> list[np.ndarray]:
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        flushed = self.flush() if shape != self._shape else []
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self._sample_rate_hz)
            self._shape = shape
        return flushed + self._samples(self._resampler.resample(frame))

    def flush(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        resampler, self._resampler, self._shape = self._resampler, None, None
        return self._samples(resampler.resample(None))

    @staticmethod
    def _samples(frames: list[av.AudioFrame | None]) -> list[np.ndarray]:
        # A resampler with nothing to do passes frames through, and None (the flush marker) with them.
        return [frame.to_ndarray().reshape(-1).astype(np.int16, copy=False) for frame in frames if frame is not None]
