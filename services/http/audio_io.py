"""Audio in and out of the HTTP service: uploads decoded to PCM16 for the gateway, the gateway's PCM16 chunks encoded
for the caller; the codec work runs off the event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
from stepaudio.common.v1 import audio_pb2

from services.common import codecs
from services.common.concurrency import run_blocking
from services.http.errors import invalid_request
from services.http.settings import HttpSettings


class ChunkEncoder:
    """A ``codecs.StreamEncoder`` opened at the first chunk's sample rate; ``close`` it when done either way."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self._encoder: codecs.StreamEncoder | None = None

    async def encode(self, chunk: audio_pb2.AudioChunk) -> bytes:
        if self._encoder is None:
            self._encoder = await run_blocking(codecs.open_encoder, self.format, chunk.format.sample_rate_hz)
        return await run_blocking(self._encoder.encode, chunk.content)

    async def finish(self) -> bytes:
        """The end of the stream (b"" when no audio came at all)."""
        return await run_blocking(self._encoder.finish) if self._encoder is not None else b""

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()


async def encoded(chunks: AsyncIterator[audio_pb2.AudioChunk], fmt: str) -> AsyncIterator[bytes]:
    """The chunks encoded as ``fmt``, piece by piece as they come."""
    encoder = ChunkEncoder(fmt)
    try:
        async for chunk in chunks:
            if piece := await encoder.encode(chunk):
                yield piece
        if tail := await encoder.finish():
            yield tail
    finally:
        encoder.close()


async def decode_upload(data: bytes, sample_rate_hz: int, settings: HttpSettings, param: str = "file") -> np.ndarray:
    """Mono int16 samples of an uploaded file; 400 naming the readable formats when it is no audio."""
    try:
        return await run_blocking(_decode, data, sample_rate_hz, settings.max_decoded_audio_seconds)
    except codecs.UnsupportedAudio as error:
        raise invalid_request(f"{param}: {error}", param=param, code="unsupported_audio") from None


def _decode(data: bytes, sample_rate_hz: int, max_seconds: float) -> np.ndarray:
    return codecs.decode_to_pcm16(data, sample_rate_hz, max_seconds=max_seconds)
