"""gRPC adapter of the tokenizer engine. No model code: validation, conversion, threading."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc
import numpy as np
from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc

from services.common.audio import (
    AudioLimits,
    DeclaredFormat,
    StreamResampler,
    check_sample_rate,
    decode_audio,
    decode_pcm16,
    resample,
)
from services.common.concurrency import run_blocking
from services.common.emotion import NOT_DETECTED, EmotionReading
from services.common.errors import InvalidArgument
from services.common.languages import language_hint
from services.common.wire import declared_format, transcript_message
from services.tokenizer.engine import (
    SpeechEvent,
    StreamOptions,
    TokenizerEngine,
    TokenizerEvent,
    TokenizerStream,
    TokensEvent,
    TranscriptEvent,
    audio_token_text,
)
from services.tokenizer.settings import TokenizerSettings


def _options(config: tokenizer_pb2.TokenizeConfig) -> StreamOptions:
    if not (config.emit_tokens or config.emit_transcript):
        raise InvalidArgument("config asks for nothing: set emit_tokens and/or emit_transcript")
    language = language_hint(config.language, "config.language")
    return StreamOptions(config.emit_tokens, config.emit_transcript, language, config.trim_silence)


def _tokens_message(event: TokensEvent) -> tokenizer_pb2.AudioTokens:
    return tokenizer_pb2.AudioTokens(
        token_ids=event.token_ids,
        text=audio_token_text(event.token_ids),
        start_seconds=event.start_seconds,
        end_seconds=event.end_seconds,
    )


def _response(event: TokenizerEvent) -> tokenizer_pb2.StreamingTokenizeResponse:
    if isinstance(event, TokensEvent):
        return tokenizer_pb2.StreamingTokenizeResponse(tokens=_tokens_message(event))
    if isinstance(event, TranscriptEvent):
        return tokenizer_pb2.StreamingTokenizeResponse(
            transcript=transcript_message(
                event.text, event.language, event.start_seconds, event.end_seconds, event.is_final, event.emotion
            )
        )
    assert isinstance(event, SpeechEvent)
    kind = (
        tokenizer_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED
        if event.started
        else tokenizer_pb2.SPEECH_EVENT_TYPE_SPEECH_ENDED
    )
    return tokenizer_pb2.StreamingTokenizeResponse(
        speech_event=tokenizer_pb2.SpeechEvent(type=kind, offset_seconds=event.offset_seconds)
    )


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServiceServicer):
    def __init__(self, engine: TokenizerEngine, settings: TokenizerSettings) -> None:
        self._engine = engine
        self._limits = AudioLimits(max_seconds=settings.max_audio_seconds)
        self._max_stream_seconds = settings.max_stream_seconds

    async def StreamingTokenize(
        self, request_iterator: AsyncIterator[tokenizer_pb2.StreamingTokenizeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tokenizer_pb2.StreamingTokenizeResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("request") != "config":
            raise InvalidArgument("the first message of a stream must be a config")
        declared = declared_format(first.config.format)
        if declared.encoding not in ("", "pcm16"):
            raise InvalidArgument("streaming audio must be raw PCM16 (encoding PCM16); send WAV files to Tokenize")
        rate = declared.sample_rate_hz or self._limits.default_sample_rate_hz
        check_sample_rate(rate)
        stream = await run_blocking(self._engine.open_stream, _options(first.config))
        feeder = _StreamFeeder(
            stream, rate, declared.channels, self._engine.capabilities.sample_rate_hz, self._max_stream_seconds
        )
        try:
            async for message in request_iterator:
                if message.WhichOneof("request") != "audio_content":
                    raise InvalidArgument("a stream takes one config, first; later messages must carry audio")
                for event in await run_blocking(feeder.feed, message.audio_content):
                    yield _response(event)
            for event in await run_blocking(feeder.finish):
                yield _response(event)
        finally:
            stream.close()

    async def Tokenize(
        self, request: tokenizer_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.TokenizeResponse:
        options = _options(request.config)
        declared = declared_format(request.audio.format)
        engine_rate = self._engine.capabilities.sample_rate_hz
        samples, duration = await run_blocking(
            _decode_whole, request.audio.content, declared, self._limits, engine_rate
        )
        stream = await run_blocking(self._engine.open_stream, options)
        try:
            events = await run_blocking(_run_whole, stream, samples)
        finally:
            stream.close()
        return _tokenize_response(events, options, duration)

    async def GetEngineInfo(
        self, request: tokenizer_pb2.GetEngineInfoRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.GetEngineInfoResponse:
        caps = self._engine.capabilities
        return tokenizer_pb2.GetEngineInfoResponse(
            engine=caps.name,
            supports_tokens=caps.supports_tokens,
            supports_transcript=caps.supports_transcript,
            sample_rate_hz=caps.sample_rate_hz,
        )


class _StreamFeeder:
    """Decoding, resampling and engine calls of one StreamingTokenize stream, one blocking call per
    message (the servicer runs them on a worker thread: none of it touches the event loop)."""

    def __init__(self, stream: TokenizerStream, rate: int, channels: int, engine_rate: int, max_seconds: float) -> None:
        self._stream = stream
        self._rate = rate
        self._channels = channels
        self._resampler = StreamResampler(rate, engine_rate)
        self._max_seconds = max_seconds
        self._received = 0

    def feed(self, content: bytes) -> list[TokenizerEvent]:
        samples = decode_pcm16(content, self._rate, self._channels)
        self._received += len(samples)
        if self._received / self._rate > self._max_seconds:
            raise InvalidArgument(f"stream exceeds the {self._max_seconds:g} s audio limit: start a new stream")
        return self._stream.feed(self._resampler.push(samples))

    def finish(self) -> list[TokenizerEvent]:
        if self._received == 0:
            raise InvalidArgument("the stream carried no audio")
        tail = self._resampler.push(np.zeros(0, dtype=np.float32), last=True)
        events = list(self._stream.feed(tail)) if len(tail) else []
        return events + list(self._stream.finish())


def _decode_whole(
    content: bytes, declared: DeclaredFormat, limits: AudioLimits, engine_rate: int
) -> tuple[np.ndarray, float]:
    """A whole clip at the engine's rate, and its duration in seconds."""
    samples, rate = decode_audio(content, declared, limits)
    return resample(samples, rate, engine_rate), len(samples) / rate


def _run_whole(stream: TokenizerStream, samples: np.ndarray) -> list[TokenizerEvent]:
    return [*stream.feed(samples), *stream.finish()]


def _tokenize_response(
    events: Iterable[TokenizerEvent], options: StreamOptions, duration: float
) -> tokenizer_pb2.TokenizeResponse:
    response = tokenizer_pb2.TokenizeResponse(duration_seconds=duration)
    token_ids: list[int] = []
    texts: list[str] = []
    transcripts: list[TranscriptEvent] = []
    language = ""
    for event in events:
        if isinstance(event, TokensEvent):
            token_ids.extend(event.token_ids)
        elif isinstance(event, TranscriptEvent) and event.text:
            texts.append(event.text)
            transcripts.append(event)
            language = language or event.language
    if options.emit_tokens:
        response.tokens.CopyFrom(_tokens_message(TokensEvent(tuple(token_ids), 0.0, duration)))
    if options.emit_transcript:
        joiner = "" if language in ("zh", "ja") else " "
        emotion = clip_emotion(transcripts)
        response.transcript.CopyFrom(transcript_message(joiner.join(texts), language, 0.0, duration, emotion=emotion))
    return response


def clip_emotion(transcripts: list[TranscriptEvent]) -> EmotionReading:
    """The emotion of a whole clip: that of its longest utterance with a detected emotion (the one that covers most
    of the speech), else the reading of an utterance where an engine listened but could not tell, else NOT_DETECTED."""
    detected = [event for event in transcripts if event.emotion.detected]
    if detected:
        return max(detected, key=lambda event: event.end_seconds - event.start_seconds).emotion
    return next((event.emotion for event in transcripts if event.emotion.engine), NOT_DETECTED)
