"""The public API. Pure orchestration: stages are called over gRPC, no model code here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
from stepaudio.chat.v1 import chat_pb2
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from stepaudio.tokenizer.v1 import tokenizer_pb2
from stepaudio.tts.v1 import tts_pb2

from services.common.audio import AudioLimits, check_sample_rate, decode_audio
from services.common.concurrency import run_blocking
from services.common.controls import controls_from_message
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.common.logs import request_id_var
from services.common.wire import declared_format
from services.gateway import metrics
from services.gateway.clauses import ClauseSplitter, looks_chinese
from services.gateway.sessions import Session, SessionStore, Turn
from services.gateway.settings import GatewaySettings
from services.gateway.stages import Stages

_SPEAKERS = {"user": gateway_pb2.SPEAKER_USER, "assistant": gateway_pb2.SPEAKER_ASSISTANT}
_DONE = object()


@dataclass
class _TurnState:
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

    def since_start(self) -> float:
        return time.perf_counter() - self.started


def _session_message(session: Session) -> gateway_pb2.Session:
    return gateway_pb2.Session(
        session_id=session.session_id,
        system_prompt=session.system_prompt,
        voice_id=session.voice_id,
        history=[gateway_pb2.HistoryEntry(speaker=_SPEAKERS[t.speaker], text=t.text) for t in session.history],
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, stages: Stages, sessions: SessionStore, settings: GatewaySettings) -> None:
        self._stages = stages
        self._sessions = sessions
        self._settings = settings
        self._active_turns = 0
        self._limits = AudioLimits(max_seconds=settings.max_audio_seconds)

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self._settings.stage_timeout_seconds if remaining is None else max(remaining, 0.001)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", request_id_var.get()),)

    def _check_audio(self, audio: audio_pb2.Audio) -> None:
        """Reject bad or over-long audio here, before any stage works on it."""
        decode_audio(audio.content, declared_format(audio.format), self._limits)

    async def _check_voice(self, voice_id: str, context: grpc.aio.ServicerContext) -> None:
        if not voice_id:
            return
        voices = await self._stages.tts.ListVoices(tts_pb2.ListVoicesRequest(), timeout=self._timeout(context))
        known = [voice.voice_id for voice in voices.voices]
        if voice_id not in known:
            raise NotFound(f"unknown voice {voice_id!r}; available voices: {', '.join(known)}")

    # --- Chat -----------------------------------------------------------------------------

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        state = _TurnState(started=time.perf_counter())
        text = request.input.text.strip()
        has_audio = bool(request.input.audio.content)
        if request.input.HasField("audio") and not has_audio:
            raise InvalidArgument("input.audio is empty: send 16-bit PCM or a WAV file")
        if not text and not has_audio:
            raise InvalidArgument("input is empty: set input.text or input.audio")
        if has_audio:
            await run_blocking(self._check_audio, request.input.audio)
        if len(text) > self._settings.max_text_chars:
            raise InvalidArgument(f"input.text is {len(text)} characters; the limit is {self._settings.max_text_chars}")
        controls_from_message(request.controls)
        if request.sample_rate_hz:
            check_sample_rate(request.sample_rate_hz)
        if self._active_turns >= self._settings.max_active_turns:
            raise ResourceExhausted(f"the gateway is serving {self._active_turns} turns, its limit; retry later")

        self._active_turns += 1
        metrics.ACTIVE_TURNS.inc()
        try:
            session = await self._sessions.get(request.session_id) if request.session_id else None
            voice_id = request.voice_id or (session.voice_id if session else "")
            if not request.text_only:
                await self._check_voice(voice_id, context)
            lock = self._sessions.lock(session.session_id) if session else asyncio.Lock()
            async with lock:
                if session:  # re-read under the lock: an earlier turn may have just been stored
                    session = await self._sessions.get(session.session_id)
                user_transcript = ""
                if has_audio:
                    transcribe_started = time.perf_counter()
                    transcript = await self._transcribe(request.input.audio, "", context)
                    state.transcribe_seconds = time.perf_counter() - transcribe_started
                    user_transcript = transcript.text
                    yield gateway_pb2.ChatResponse(user_transcript=transcript)
                    if not user_transcript.strip() and not text:
                        raise InvalidArgument("no speech was recognised in input.audio: check the recording")
                user_text = "\n".join(part for part in (text, user_transcript.strip()) if part)
                messages = self._prompt(session, request.system_prompt, user_text)
                async for event in self._reply(messages, request, voice_id, state, context):
                    yield event
                if session:
                    session.history += [Turn("user", user_text), Turn("assistant", state.reply_text)]
                    await self._sessions.save(session)
                yield gateway_pb2.ChatResponse(summary=self._summary(request, state, user_transcript))
        finally:
            self._active_turns -= 1
            metrics.ACTIVE_TURNS.dec()

    def _prompt(self, session: Session | None, system_prompt: str, user_text: str) -> list[chat_pb2.ChatMessage]:
        system = (session.system_prompt if session else system_prompt) or self._settings.default_system_prompt
        messages = [chat_pb2.ChatMessage(role=chat_pb2.ROLE_SYSTEM, text=system)]
        if session and self._settings.max_history_turns:
            for turn in session.history[-2 * self._settings.max_history_turns :]:
                role = chat_pb2.ROLE_USER if turn.speaker == "user" else chat_pb2.ROLE_ASSISTANT
                messages.append(chat_pb2.ChatMessage(role=role, text=turn.text))
        messages.append(chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, text=user_text))
        return messages

    async def _reply(
        self,
        messages: list[chat_pb2.ChatMessage],
        request: gateway_pb2.ChatRequest,
        voice_id: str,
        state: _TurnState,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        """Chat deltas are cut into clauses that TTS synthesises while the LLM keeps writing;
        both producers feed one queue, which is the order events reach the client."""
        events: asyncio.Queue[object] = asyncio.Queue()
        clauses: asyncio.Queue[str | None] = asyncio.Queue()
        splitter = ClauseSplitter(self._settings.first_clause_min_chars, self._settings.clause_min_chars)

        async def write_text() -> None:
            call_started = time.perf_counter()
            call = self._stages.chat.Generate(
                chat_pb2.GenerateRequest(messages=messages, sampling=request.sampling),
                timeout=self._timeout(context),
                metadata=self._metadata(),
            )
            async for response in call:
                if response.HasField("summary"):
                    state.summary = response.summary
                    continue
                if not state.first_text:
                    state.first_text = state.since_start()
                    metrics.CHAT_TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - call_started)
                state.reply_text += response.text_delta
                await events.put(gateway_pb2.ChatResponse(reply_text_delta=response.text_delta))
                for clause in splitter.push(response.text_delta):
                    await clauses.put(clause)
            metrics.STAGE_SECONDS.labels("chat").observe(time.perf_counter() - call_started)
            for clause in splitter.flush():
                await clauses.put(clause)
            await clauses.put(None)

        async def speak() -> None:
            voice = voice_id
            while (clause := await clauses.get()) is not None:
                if request.text_only:
                    continue
                if not voice:
                    voice = self._settings.voice_zh if looks_chinese(clause) else self._settings.voice_en
                async for chunk in self._synthesize(clause, voice, request, context):
                    await events.put(chunk)

        tasks = [asyncio.create_task(_finish_into(events, job)) for job in (write_text, speak)]
        try:
            finished = 0
            while finished < len(tasks):
                event = await events.get()
                if event is _DONE:
                    finished += 1
                    continue
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, tts_pb2.SynthesizeResponse):
                    event = self._number_audio(event, state)
                yield event
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _number_audio(self, response: tts_pb2.SynthesizeResponse, state: _TurnState) -> gateway_pb2.ChatResponse:
        """Renumber TTS chunks (one TTS call per clause) into one stream for the turn."""
        chunk = response.audio
        now = time.perf_counter()
        if not state.first_audio:
            state.first_audio = now - state.started
            metrics.TIME_TO_FIRST_AUDIO.observe(state.first_audio)
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

    def _summary(self, request: gateway_pb2.ChatRequest, state: _TurnState, transcript: str) -> gateway_pb2.TurnSummary:
        usage = state.summary or chat_pb2.GenerateSummary()
        return gateway_pb2.TurnSummary(
            user_transcript=transcript,
            reply_text=state.reply_text,
            audio_seconds=state.audio_samples / state.sample_rate_hz if state.sample_rate_hz else 0.0,
            latency=gateway_pb2.TurnLatency(
                transcribe_seconds=state.transcribe_seconds,
                first_text_seconds=state.first_text,
                first_audio_seconds=state.first_audio,
                total_seconds=state.since_start(),
            ),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            session_id=request.session_id,
            request_id=request_id_var.get(),
        )

    # --- Stage helpers ----------------------------------------------------------------------

    async def _transcribe(
        self, audio: audio_pb2.Audio, language: str, context: grpc.aio.ServicerContext
    ) -> speech_pb2.Transcript:
        started = time.perf_counter()
        response = await self._stages.tokenizer.Tokenize(
            tokenizer_pb2.TokenizeRequest(
                config=tokenizer_pb2.TokenizeConfig(emit_transcript=True, language=language), audio=audio
            ),
            timeout=self._timeout(context),
            metadata=self._metadata(),
        )
        metrics.STAGE_SECONDS.labels("tokenize").observe(time.perf_counter() - started)
        return response.transcript

    async def _synthesize(
        self,
        text: str,
        voice_id: str,
        request: gateway_pb2.ChatRequest | gateway_pb2.SynthesizeRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        started = time.perf_counter()
        call = self._stages.tts.Synthesize(
            tts_pb2.SynthesizeRequest(
                text=text, voice_id=voice_id, controls=request.controls, sample_rate_hz=request.sample_rate_hz
            ),
            timeout=self._timeout(context),
            metadata=self._metadata(),
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

    # --- Other RPCs -------------------------------------------------------------------------

    async def Synthesize(
        self, request: gateway_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.SynthesizeResponse]:
        async for response in self._synthesize(request.text, request.voice_id, request, context):
            yield gateway_pb2.SynthesizeResponse(audio=response.audio)

    async def Transcribe(
        self, request: gateway_pb2.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TranscribeResponse:
        await run_blocking(self._check_audio, request.audio)
        transcript = await self._transcribe(request.audio, request.language, context)
        return gateway_pb2.TranscribeResponse(
            transcript=transcript, duration_seconds=transcript.end_seconds - transcript.start_seconds
        )

    async def ListVoices(
        self, request: gateway_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListVoicesResponse:
        response = await self._stages.tts.ListVoices(
            tts_pb2.ListVoicesRequest(language=request.language),
            timeout=self._timeout(context),
            metadata=self._metadata(),
        )
        return gateway_pb2.ListVoicesResponse(voices=response.voices)

    async def CreateSession(
        self, request: gateway_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CreateSessionResponse:
        await self._check_voice(request.voice_id, context)
        system_prompt = request.system_prompt.strip() or self._settings.default_system_prompt
        if len(system_prompt) > self._settings.max_text_chars:
            raise InvalidArgument(f"system_prompt is over {self._settings.max_text_chars} characters")
        session = await self._sessions.create(system_prompt, request.voice_id)
        return gateway_pb2.CreateSessionResponse(session=_session_message(session))

    async def GetSession(
        self, request: gateway_pb2.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetSessionResponse:
        return gateway_pb2.GetSessionResponse(session=_session_message(await self._sessions.get(request.session_id)))

    async def DeleteSession(
        self, request: gateway_pb2.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DeleteSessionResponse:
        await self._sessions.delete(request.session_id)
        return gateway_pb2.DeleteSessionResponse()


async def _finish_into(events: asyncio.Queue[object], job: Callable[[], Awaitable[None]]) -> None:
    """Run ``job``; report its end (or its error) on the event queue."""
    try:
        await job()
        await events.put(_DONE)
    except asyncio.CancelledError:
        raise
    except BaseException as error:
        await events.put(error)
