"""The core of a conversational turn, shared by Chat and StreamingChat: prompt building, the
clause pipeline (chat → clauses → tts, overlapped), stage calls with deadlines, and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from stepaudio.chat.v1 import chat_pb2
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio.tokenizer.v1 import tokenizer_pb2
from stepaudio.tts.v1 import tts_pb2

from services.common import tracing
from services.common.emotion import NOT_DETECTED, EmotionReading, to_message
from services.common.errors import NotFound
from services.common.logs import request_id_var
from services.gateway import metrics
from services.gateway.clauses import ClauseSplitter, reply_language
from services.gateway.emotion import context_note, empathetic_emotion, parse_chat_reading
from services.gateway.events import EventQueue
from services.gateway.history import HistoryBudget, estimate_tokens, fit_history
from services.gateway.sessions import Session, Turn
from services.gateway.settings import GatewaySettings
from services.gateway.stages import Stages

DONE = object()  # end-of-producer marker on an event queue


@dataclass(frozen=True)
class ReplyOptions:
    """How to reply: the request fields that shape a reply, whatever RPC carried them."""

    voice_id: str = ""
    controls: speech_pb2.VoiceControls = field(default_factory=speech_pb2.VoiceControls)
    sampling: speech_pb2.SamplingParams = field(default_factory=speech_pb2.SamplingParams)
    sample_rate_hz: int = 0
    text_only: bool = False
    reply_mode: int = gateway_pb2.REPLY_MODE_UNSPECIFIED


@dataclass
class TurnState:
    """What a turn has produced so far; ``started`` is the end of the user's input."""

    started: float
    reply_text: str = ""
    transcribe_seconds: float = 0.0
    first_text: float = 0.0
    first_audio: float = 0.0
    last_audio: float = 0.0
    audio_samples: int = 0
    sample_rate_hz: int = 0
    chunks: int = 0
    summary: chat_pb2.GenerateSummary | None = None
    spoken_clauses: list[tuple[str, float]] = field(default_factory=list)  # (clause, audio end in s)
    span: Any = None  # the turn's trace span while it replies (tracing.py); None when tracing is off
    user_emotion: EmotionReading = NOT_DETECTED  # how the user sounded (spoken input)
    reply_emotion: int | None = None  # the Emotion control of the first clause spoken; None: nothing spoken yet

    def since_start(self) -> float:
        return time.perf_counter() - self.started

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples / self.sample_rate_hz if self.sample_rate_hz else 0.0

    def text_played_by(self, seconds: float) -> str:
        """The reply text whose audio ended by ``seconds`` (what a listener has heard)."""
        return "".join(clause for clause, end in self.spoken_clauses if end <= seconds + 1e-6)


@dataclass
class _ClauseSpoken:
    clause: str


@dataclass(frozen=True)
class AudioTokenMode:
    """Whether spoken input goes to the chat stage as Step-Audio audio tokens (the tokenizer produces them and the
    chat engine reads them), and whether the tokenizer can also transcribe (for history and the client)."""

    enabled: bool
    transcript: bool


class TurnRunner:
    def __init__(self, stages: Stages, settings: GatewaySettings) -> None:
        self.stages = stages
        self._settings = settings
        self._audio_token_mode: AudioTokenMode | None = None
        self._chat_info: chat_pb2.GetEngineInfoResponse | None = None

    def timeout(self, context: grpc.aio.ServicerContext, default: float | None = None) -> float:
        """The client's deadline, else ``default`` (a stage call's: ``stage_timeout_seconds``)."""
        remaining = context.time_remaining()
        if remaining is None:
            return self._settings.stage_timeout_seconds if default is None else default
        return max(remaining, 0.001)

    @staticmethod
    def metadata() -> tuple[tuple[str, str], ...]:
        return (("x-request-id", request_id_var.get()),)

    def voice_for(self, text: str) -> str:
        """The configured reply voice of the language ``text`` is in (``reply_language``)."""
        language = reply_language(text)
        if language == "zh":
            return self._settings.voice_zh
        if language == "ja" and self._settings.voice_ja:
            return self._settings.voice_ja
        return self._settings.voice_en

    async def check_voice(self, voice_id: str, context: grpc.aio.ServicerContext) -> None:
        if not voice_id:
            return
        voices = await self.stages.tts.unary(
            "ListVoices", tts_pb2.ListVoicesRequest(), self.timeout(context), self.metadata()
        )
        known = [voice.voice_id for voice in voices.voices]
        if voice_id not in known:
            raise NotFound(f"unknown voice {voice_id!r}; available voices: {', '.join(known)}")

    async def chat_info(self, context: grpc.aio.ServicerContext) -> chat_pb2.GetEngineInfoResponse:
        """Asked of the chat stage once, then remembered: engines are fixed for a stage's life."""
        if self._chat_info is None:
            self._chat_info = await self.stages.chat.unary(
                "GetEngineInfo", chat_pb2.GetEngineInfoRequest(), self.timeout(context), self.metadata()
            )
        return self._chat_info

    async def audio_token_mode(self, context: grpc.aio.ServicerContext) -> AudioTokenMode:
        """Asked of both stages once (GetEngineInfo), then remembered."""
        if self._audio_token_mode is None:
            tokenizer, chat = await asyncio.gather(
                self.stages.tokenizer.unary(
                    "GetEngineInfo", tokenizer_pb2.GetEngineInfoRequest(), self.timeout(context), self.metadata()
                ),
                self.chat_info(context),
            )
            self._audio_token_mode = AudioTokenMode(
                tokenizer.supports_tokens and chat.supports_audio_tokens, tokenizer.supports_transcript
            )
        return self._audio_token_mode

    async def prompt(
        self,
        session: Session | None,
        system_prompt: str,
        user_text: str,
        options: ReplyOptions,
        context: grpc.aio.ServicerContext,
        audio_tokens: str = "",
        user_emotion: EmotionReading = NOT_DETECTED,
    ) -> list[chat_pb2.ChatMessage]:
        """System prompt (with a note of the user's emotion when one was detected), the earlier turns that fit (see
        ``history``), the user's turn."""
        system = (session.system_prompt if session else system_prompt) or self._settings.default_system_prompt
        note = context_note(self._settings.emotion_context, user_emotion, self._settings.emotion_min_confidence)
        system = f"{system}\n{note}" if note else system
        history: list[Turn] = []
        if session:
            budget = await self._history_budget(system, user_text, audio_tokens, options, context)
            history = fit_history(session.history, budget)
        messages = [chat_pb2.ChatMessage(role=chat_pb2.ROLE_SYSTEM, text=system)]
        for turn in history:
            role = chat_pb2.ROLE_USER if turn.speaker == "user" else chat_pb2.ROLE_ASSISTANT
            messages.append(chat_pb2.ChatMessage(role=role, text=turn.text))
        messages.append(chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, text=user_text, audio_tokens=audio_tokens))
        return messages

    async def _history_budget(
        self,
        system: str,
        user_text: str,
        audio_tokens: str,
        options: ReplyOptions,
        context: grpc.aio.ServicerContext,
    ) -> HistoryBudget:
        settings = self._settings
        window = (await self.chat_info(context)).max_context_tokens
        left: int | None = None
        if window:
            sampling = options.sampling
            reply = max(sampling.max_tokens, 0) if sampling.HasField("max_tokens") else settings.reply_reserve_tokens
            this_turn = estimate_tokens(system, settings.chars_per_token) + estimate_tokens(
                user_text, settings.chars_per_token, audio_tokens
            )
            left = max(window - reply - this_turn, 0)
        return HistoryBudget(settings.max_history_turns, settings.max_history_chars, left, settings.chars_per_token)

    async def reply(
        self,
        messages: list[chat_pb2.ChatMessage],
        options: ReplyOptions,
        state: TurnState,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        """Chat deltas are cut into clauses that TTS synthesises while the LLM keeps writing;
        both producers feed one queue, which is the order events reach the client. Cancelling
        the consumer cancels both producers and so the stage calls. Traced as a "turn" span (the stage calls are
        its children) with "first token" and "first audio" events."""
        with tracing.span("turn") as span:
            state.span = span
            async for event in self._reply(messages, options, state, context):
                yield event

    async def _reply(
        self,
        messages: list[chat_pb2.ChatMessage],
        options: ReplyOptions,
        state: TurnState,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        events = EventQueue(self._settings.max_buffered_events)
        clauses: asyncio.Queue[str | None] = asyncio.Queue(self._settings.max_buffered_events)
        splitter = ClauseSplitter(self._settings.first_clause_min_chars, self._settings.clause_min_chars)

        async def write_text() -> None:
            call_started = time.perf_counter()
            call = self.stages.chat.stream(
                "Generate",
                chat_pb2.GenerateRequest(messages=messages, sampling=options.sampling),
                self.timeout(context),
                self.metadata(),
            )
            async for response in call:
                if response.HasField("summary"):
                    state.summary = response.summary
                    continue
                if not state.first_text:
                    state.first_text = state.since_start()
                    metrics.CHAT_TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - call_started)
                    tracing.add_event(state.span, "first token", seconds=state.first_text)
                state.reply_text += response.text_delta
                await events.put(gateway_pb2.ChatResponse(reply_text_delta=response.text_delta))
                for clause in splitter.push(response.text_delta):
                    await clauses.put(clause)
            metrics.STAGE_SECONDS.labels("chat").observe(time.perf_counter() - call_started)
            for clause in splitter.flush():
                await clauses.put(clause)
            await clauses.put(None)

        async def speak() -> None:
            voice = options.voice_id
            emotion = ReplyEmotion(self, options, state, context)
            while (clause := await clauses.get()) is not None:
                if options.text_only:
                    continue
                if not voice:
                    voice = self.voice_for(clause)
                controls = await emotion.controls_for(voice)
                async for chunk in self.synthesize(clause, voice, options, context, controls):
                    await events.put(chunk)
                await events.put(_ClauseSpoken(clause))

        tasks = [
            asyncio.create_task(finish_into(events, job), context=tracing.context_with(state.span))
            for job in (write_text, speak)
        ]
        try:
            finished = 0
            while finished < len(tasks):
                event = await events.get()
                if event is DONE:
                    finished += 1
                elif isinstance(event, _ClauseSpoken):
                    state.spoken_clauses.append((event.clause, state.audio_seconds))
                elif isinstance(event, tts_pb2.SynthesizeResponse):
                    yield self._number_audio(event, state)
                else:
                    yield event  # type: ignore[misc]
        finally:
            events.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _number_audio(response: tts_pb2.SynthesizeResponse, state: TurnState) -> gateway_pb2.ChatResponse:
        """Renumber TTS chunks (one TTS call per clause) into one stream for the turn."""
        chunk = response.audio
        now = time.perf_counter()
        if not state.first_audio:
            state.first_audio = now - state.started
            metrics.TIME_TO_FIRST_AUDIO.observe(state.first_audio)
            tracing.add_event(state.span, "first audio", seconds=state.first_audio)
        else:
            metrics.INTER_CHUNK_GAP.observe(now - state.last_audio)
        state.last_audio = now
        rate = chunk.format.sample_rate_hz
        state.sample_rate_hz = rate
        chunk.sequence_number = state.chunks
        chunk.offset_seconds = state.audio_samples / rate
        state.chunks += 1
        state.audio_samples += len(chunk.content) // 2
        return gateway_pb2.ChatResponse(audio=chunk)

    @staticmethod
    def summary(
        state: TurnState, transcript: str, session_id: str, options: ReplyOptions | None = None
    ) -> gateway_pb2.TurnSummary:
        usage = state.summary or chat_pb2.GenerateSummary()
        requested = options.controls.emotion if options else speech_pb2.EMOTION_UNSPECIFIED
        return gateway_pb2.TurnSummary(
            user_transcript=transcript,
            reply_text=state.reply_text,
            audio_seconds=state.audio_seconds,
            latency=gateway_pb2.TurnLatency(
                transcribe_seconds=state.transcribe_seconds,
                first_text_seconds=state.first_text,
                first_audio_seconds=state.first_audio,
                total_seconds=state.since_start(),
            ),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            session_id=session_id,
            request_id=request_id_var.get(),
            user_emotion=to_message(state.user_emotion),
            reply_emotion=requested if state.reply_emotion is None else state.reply_emotion,
        )

    async def transcribe(
        self, audio: audio_pb2.Audio, language: str, context: grpc.aio.ServicerContext
    ) -> speech_pb2.Transcript:
        started = time.perf_counter()
        response = await self.stages.tokenizer.unary(
            "Tokenize",
            tokenizer_pb2.TokenizeRequest(
                config=tokenizer_pb2.TokenizeConfig(emit_transcript=True, language=language), audio=audio
            ),
            self.timeout(context),
            self.metadata(),
        )
        metrics.STAGE_SECONDS.labels("tokenize").observe(time.perf_counter() - started)
        return response.transcript

    async def tokenize(
        self, audio: audio_pb2.Audio, transcript: bool, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.TokenizeResponse:
        """Audio tokens of the user's audio (the chat LM hears it), and its transcript when the engine makes one."""
        started = time.perf_counter()
        response = await self.stages.tokenizer.unary(
            "Tokenize",
            tokenizer_pb2.TokenizeRequest(
                config=tokenizer_pb2.TokenizeConfig(emit_tokens=True, emit_transcript=transcript), audio=audio
            ),
            self.timeout(context),
            self.metadata(),
        )
        metrics.STAGE_SECONDS.labels("tokenize").observe(time.perf_counter() - started)
        return response

    async def read_emotion(self, audio_tokens: str, context: grpc.aio.ServicerContext) -> EmotionReading:
        """The chat model's own reading of the speaker's emotion in ``audio_tokens`` (it hears them): one greedy
        Generate call with the emotion question as the system prompt; an answer that is not exactly a label word
        is not detected."""
        started = time.perf_counter()
        info = await self.chat_info(context)
        messages = [
            chat_pb2.ChatMessage(role=chat_pb2.ROLE_SYSTEM, text=self._settings.chat_emotion_prompt),
            chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, audio_tokens=audio_tokens),
        ]
        sampling = speech_pb2.SamplingParams(temperature=0.0, max_tokens=_READING_MAX_TOKENS)
        call = self.stages.chat.stream(
            "Generate",
            chat_pb2.GenerateRequest(messages=messages, sampling=sampling),
            self.timeout(context),
            self.metadata(),
        )
        answer = "".join([response.text_delta async for response in call])
        metrics.STAGE_SECONDS.labels("emotion").observe(time.perf_counter() - started)
        return parse_chat_reading(answer, f"chat:{info.model}")

    async def voice_controls(self, context: grpc.aio.ServicerContext) -> dict[str, tuple[str, ...]]:
        """The controls each voice of the TTS stage honours (asked now: voices are registered and deleted)."""
        voices = await self.stages.tts.unary(
            "ListVoices", tts_pb2.ListVoicesRequest(), self.timeout(context), self.metadata()
        )
        return {voice.voice_id: tuple(voice.supported_controls) for voice in voices.voices}

    async def synthesize(
        self,
        text: str,
        voice_id: str,
        options: ReplyOptions,
        context: grpc.aio.ServicerContext,
        controls: speech_pb2.VoiceControls | None = None,
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        """``controls``: these instead of the request's (the empathetic mode's choice)."""
        started = time.perf_counter()
        call = self.stages.tts.stream(
            "Synthesize",
            tts_pb2.SynthesizeRequest(
                text=text,
                voice_id=voice_id,
                controls=options.controls if controls is None else controls,
                sample_rate_hz=options.sample_rate_hz,
            ),
            self.timeout(context),
            self.metadata(),
        )
        samples = 0
        rate = 0
        async for response in call:
            if not samples:
                metrics.TTS_FIRST_CHUNK.observe(time.perf_counter() - started)
            samples += len(response.audio.content) // 2
            rate = response.audio.format.sample_rate_hz
            yield response
        elapsed = time.perf_counter() - started
        metrics.STAGE_SECONDS.labels("tts").observe(elapsed)
        if samples and rate:
            metrics.TTS_REAL_TIME_FACTOR.observe(elapsed / (samples / rate))


_READING_MAX_TOKENS = 8  # one label word, with room for a stray quote or full stop


class ReplyEmotion:
    """The reply's voice controls, clause by clause. In the empathetic mode, when the user's emotion is usable, its
    reply emotion (``emotion.EMPATHETIC_REPLY``) replaces the request's on every voice that honours the emotion
    control, and the neutral choice clears it on any voice; otherwise the request's controls stand. The voices'
    controls are asked of the TTS stage once, when first needed."""

    def __init__(self, turns: TurnRunner, options: ReplyOptions, state: TurnState, context: grpc.aio.ServicerContext):
        self._turns = turns
        self._options = options
        self._state = state
        self._context = context
        self._choice = (
            empathetic_emotion(state.user_emotion, turns._settings.emotion_min_confidence)
            if options.reply_mode == gateway_pb2.REPLY_MODE_EMPATHETIC
            else None
        )
        self._supported: dict[str, tuple[str, ...]] | None = None

    async def controls_for(self, voice_id: str) -> speech_pb2.VoiceControls:
        controls = self._options.controls
        choice = self._choice
        if choice is not None and choice != controls.emotion:
            if choice != speech_pb2.EMOTION_UNSPECIFIED and self._supported is None:
                self._supported = await self._turns.voice_controls(self._context)
            if choice == speech_pb2.EMOTION_UNSPECIFIED or "emotion" in (self._supported or {}).get(voice_id, ()):
                controls = speech_pb2.VoiceControls()
                controls.CopyFrom(self._options.controls)
                controls.emotion = choice
        if self._state.reply_emotion is None:
            self._state.reply_emotion = controls.emotion
        return controls


async def finish_into(events: EventQueue, job: Callable[[], Awaitable[None]]) -> None:
    """Run ``job``; report its end (or its error) on the event queue."""
    try:
        await job()
    except asyncio.CancelledError:
        raise
    except BaseException as error:
        events.fail(error)
    else:
        await events.put(DONE)
