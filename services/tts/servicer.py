"""gRPC adapter of the TTS engine: validation, voice lookup, pitch, volume, resampling, chunking."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
from stepaudio.common.v1 import speech_pb2
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc

from services.common.audio import StreamResampler, check_sample_rate
from services.common.concurrency import run_blocking
from services.common.controls import controls_from_message
from services.common.errors import InvalidArgument, NotFound
from services.common.wire import audio_chunk, declared_format
from services.tts.engine import PcmChunk, TtsEngine, VoiceInfo
from services.tts.postprocess import PitchShifter, apply_volume
from services.tts.settings import TtsSettings
from services.tts.voices import prompt_wav_from


def voice_message(voice: VoiceInfo) -> speech_pb2.Voice:
    return speech_pb2.Voice(
        voice_id=voice.voice_id,
        display_name=voice.display_name,
        language_codes=voice.language_codes,
        native_sample_rate_hz=voice.native_sample_rate_hz,
        engine=voice.engine,
        supported_controls=voice.supported_controls,
        cloned=voice.cloned,
    )


# Converting a chunk costs up to ~0.4 ms per second of audio (resampling; measured on this project's 2-core
# machine). Chunks up to this long are converted on the event loop (a thread hop costs about as much); longer ones,
# such as a whole sentence from a voice worker, on a worker thread. A pitch shift costs ~20x more (WSOLA): with one,
# every chunk is converted on a worker thread.
_INLINE_SECONDS = 1.0
# Controls every voice has because the servicer applies them to the engine's audio.
_SERVICER_CONTROLS = frozenset({"volume", "pitch"})


class _AudioOutput:
    """Engine chunks → wire chunks of one Synthesize call: pitch shift (at the engine's rate, after the engine's
    own speed change: the two combine), resampling, volume, PCM16 pieces of at most ``piece`` samples, numbered in
    order. CPU work: the servicer runs it on a worker thread."""

    def __init__(self, rate: int, piece: int, volume: float, pitch: float = 0.0) -> None:
        self._rate = rate
        self._piece = piece
        self._volume = volume
        self._pitch = pitch
        self._shifter: PitchShifter | None = None
        self._resampler: StreamResampler | None = None
        self._sequence = 0
        self._sent = 0

    def convert(self, chunk: PcmChunk) -> list[tts_pb2.SynthesizeResponse]:
        if self._resampler is None:
            self._resampler = StreamResampler(chunk.sample_rate_hz, self._rate)
            self._shifter = PitchShifter(chunk.sample_rate_hz, self._pitch) if self._pitch else None
        samples = self._shifter.push(chunk.samples) if self._shifter else chunk.samples
        return self._pieces(self._resampler.push(samples))

    def finish(self) -> list[tts_pb2.SynthesizeResponse]:
        """The pitch shifter's and the resampler's tails (nothing if no chunk came)."""
        if self._resampler is None:
            return []
        tail = self._shifter.finish() if self._shifter else np.zeros(0, dtype=np.float32)
        return self._pieces(self._resampler.push(tail, last=True))

    def _pieces(self, samples: np.ndarray) -> list[tts_pb2.SynthesizeResponse]:
        samples = apply_volume(samples, self._volume)
        responses = []
        for start in range(0, len(samples), self._piece):
            part = samples[start : start + self._piece]
            offset = self._sent / self._rate
            responses.append(tts_pb2.SynthesizeResponse(audio=audio_chunk(part, self._rate, self._sequence, offset)))
            self._sequence += 1
            self._sent += len(part)
        return responses


class TtsServicer(tts_pb2_grpc.TtsServiceServicer):
    def __init__(self, engine: TtsEngine, settings: TtsSettings) -> None:
        self._engine = engine
        self._settings = settings

    def _voice(self, voice_id: str) -> VoiceInfo:
        voices = {voice.voice_id: voice for voice in self._engine.voices()}
        voice = voices.get(voice_id or self._engine.default_voice_id)
        if voice is None:
            raise NotFound(f"unknown voice {voice_id!r}; available voices: {', '.join(sorted(voices))}")
        return voice

    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        text = request.text.strip()
        if not text:
            raise InvalidArgument("text is empty: send the text to speak")
        if len(text) > self._settings.max_text_chars:
            raise InvalidArgument(
                f"text is {len(text)} characters; the limit is {self._settings.max_text_chars}: split it"
            )
        voice = self._voice(request.voice_id)
        controls = controls_from_message(request.controls)
        unsupported = set(controls.requested()) - set(voice.supported_controls) - _SERVICER_CONTROLS
        if unsupported:
            raise InvalidArgument(
                f"voice {voice.voice_id} does not support {', '.join(sorted(unsupported))}; "
                f"it supports: {', '.join(voice.supported_controls) or 'no controls'}"
            )
        rate = request.sample_rate_hz or voice.native_sample_rate_hz
        check_sample_rate(rate)
        output = _AudioOutput(rate, max(1, int(self._settings.chunk_seconds * rate)), controls.volume, controls.pitch)
        chunks = self._engine.synthesize(text, voice, controls)
        try:
            async for chunk in chunks:
                if controls.pitch or len(chunk.samples) > _INLINE_SECONDS * chunk.sample_rate_hz:
                    responses = await run_blocking(output.convert, chunk)
                else:
                    responses = output.convert(chunk)
                for response in responses:
                    yield response
        finally:
            await chunks.aclose()
        for response in await run_blocking(output.finish):
            yield response

    async def ListVoices(
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        prefix = request.language.lower()
        voices = [
            voice_message(voice)
            for voice in self._engine.voices()
            if not prefix or any(code.lower().startswith(prefix) for code in voice.language_codes)
        ]
        return tts_pb2.ListVoicesResponse(voices=voices)

    async def RegisterVoice(
        self, request: tts_pb2.RegisterVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.RegisterVoiceResponse:
        wav = await run_blocking(prompt_wav_from, request.audio.content, declared_format(request.audio.format))
        voice = await self._engine.register_voice(
            request.voice_id,
            request.display_name,
            wav,
            request.transcript,
            tuple(request.prompt_tokens),
            tuple(request.language_codes),
        )
        return tts_pb2.RegisterVoiceResponse(voice=voice_message(voice))

    async def DeleteVoice(
        self, request: tts_pb2.DeleteVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.DeleteVoiceResponse:
        if not request.voice_id:
            raise InvalidArgument("voice_id is empty: name the cloned voice to delete")
        await self._engine.delete_voice(request.voice_id)
        return tts_pb2.DeleteVoiceResponse()
