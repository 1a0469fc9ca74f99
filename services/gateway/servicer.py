"""The public API. Pure orchestration: stages are called over gRPC, no model code here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace

import grpc
from stepaudio.common.v1 import audio_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from stepaudio.tokenizer.v1 import tokenizer_pb2
from stepaudio.tts.v1 import tts_pb2

from services.common.audio import AudioLimits, check_sample_rate, decode_audio
from services.common.concurrency import run_blocking
from services.common.controls import controls_from_message
from services.common.emotion import from_message, to_message
from services.common.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from services.common.voice_prompts import check_registration, prompt_wav_from
from services.common.wire import declared_format
from services.gateway import metrics
from services.gateway.conversation import Conversation
from services.gateway.sessions import Session, SessionStore, Turn
from services.gateway.settings import GatewaySettings
from services.gateway.stages import Stages, begin_call
from services.gateway.turns import ReplyOptions, TurnRunner, TurnState

_SPEAKERS = {"user": gateway_pb2.SPEAKER_USER, "assistant": gateway_pb2.SPEAKER_ASSISTANT}


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
        self._turns = TurnRunner(stages, settings)
        self._active_turns = 0
        self._limits = AudioLimits(max_seconds=settings.max_audio_seconds)

    def _check_audio(self, audio: audio_pb2.Audio) -> None:
        """Reject bad or over-long audio here, before any stage works on it."""
        decode_audio(audio.content, declared_format(audio.format), self._limits)

    @staticmethod
    def _check_reply_options(options: ReplyOptions) -> None:
        controls_from_message(options.controls)
        if options.sample_rate_hz:
            check_sample_rate(options.sample_rate_hz)
        if options.reply_mode not in gateway_pb2.ReplyMode.values():
            raise InvalidArgument(
                f"reply_mode {options.reply_mode} is not a known ReplyMode value: use REPLY_MODE_UNSPECIFIED (0) or "
                "REPLY_MODE_EMPATHETIC (1)"
            )

    def _check_system_prompt(self, system_prompt: str, field: str) -> None:
        length, limit = len(system_prompt.strip()), self._settings.max_text_chars
        if length > limit:
            raise InvalidArgument(f"{field} is {length} characters; the limit is {limit}")

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        """Admission control: at most ``max_active_turns`` Chat/StreamingChat calls at once."""
        if self._active_turns >= self._settings.max_active_turns:
            raise ResourceExhausted(
                f"the gateway is serving {self._active_turns} conversations, its limit; retry later"
            )
        self._active_turns += 1
        metrics.ACTIVE_TURNS.inc()
        try:
            yield
        finally:
            self._active_turns -= 1
            metrics.ACTIVE_TURNS.dec()

    # --- Chat -----------------------------------------------------------------------------

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        state = TurnState(started=time.perf_counter())
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
        self._check_system_prompt(request.system_prompt, "system_prompt")
        options = ReplyOptions(
            request.voice_id,
            request.controls,
            request.sampling,
            request.sample_rate_hz,
            request.text_only,
            request.reply_mode,
        )
        self._check_reply_options(options)

        with self._admitted():
            begin_call()
            session = await self._sessions.get(request.session_id) if request.session_id else None
            if session and not options.voice_id:
                options = replace(options, voice_id=session.voice_id)
            if not options.text_only:
                await self._turns.check_voice(options.voice_id, context)
            lock = self._sessions.lock(session.session_id) if session else asyncio.Lock()
            async with lock:
                if session:  # re-read under the lock: an earlier turn may have just been stored
                    session = await self._sessions.get(session.session_id)
                user_transcript = ""
                audio_tokens = ""  # the user's audio as <audio_N> tokens, when the chat LM hears audio
                if has_audio:
                    transcribe_started = time.perf_counter()
                    mode = await self._turns.audio_token_mode(context)
                    if mode.enabled:
                        tokenized = await self._turns.tokenize(request.input.audio, mode.transcript, context)
                        transcript, audio_tokens = tokenized.transcript, tokenized.tokens.text
                        if not tokenized.tokens.token_ids and not text:
                            raise InvalidArgument("input.audio gave no audio tokens: check the recording")
                        if audio_tokens and self._settings.chat_emotion_reading and not transcript.emotion.emotion:
                            reading = await self._turns.read_emotion(audio_tokens, context)
                            transcript.emotion.CopyFrom(to_message(reading))
                    else:
                        transcript = await self._turns.transcribe(request.input.audio, "", context)
                    state.transcribe_seconds = time.perf_counter() - transcribe_started
                    state.user_emotion = from_message(transcript.emotion)
                    user_transcript = transcript.text
                    yield gateway_pb2.ChatResponse(user_transcript=transcript)
                    if not user_transcript.strip() and not text and not audio_tokens:
                        raise InvalidArgument("no speech was recognised in input.audio: check the recording")
                # History keeps the turn as text: the transcript where there is one (as the reference demo does for
                # later turns); audio heard only as tokens, without a transcript, is not carried into later turns.
                user_text = "\n".join(part for part in (text, user_transcript.strip()) if part)
                prompt_text = text if audio_tokens else user_text
                messages = await self._turns.prompt(
                    session, request.system_prompt, prompt_text, options, context, audio_tokens, state.user_emotion
                )
                async for event in self._turns.reply(messages, options, state, context):
                    yield event
                if session:
                    turns = [Turn("user", user_text), Turn("assistant", state.reply_text)]
                    session.add(turns, self._settings.max_stored_turns)
                    await self._sessions.save(session)
                summary = self._turns.summary(state, user_transcript, request.session_id, options)
                yield gateway_pb2.ChatResponse(summary=summary)

    async def StreamingChat(
        self, request_iterator: AsyncIterator[gateway_pb2.StreamingChatRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.StreamingChatResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("request") != "config":
            raise InvalidArgument("the first message of a stream must be a config")
        config = first.config
        self._check_system_prompt(config.system_prompt, "config.system_prompt")
        options = ReplyOptions(
            config.voice_id, config.controls, config.sampling, config.sample_rate_hz, reply_mode=config.reply_mode
        )
        self._check_reply_options(options)
        with self._admitted():
            begin_call()
            session = await self._sessions.get(config.session_id) if config.session_id else None
            if session and not options.voice_id:
                options = replace(options, voice_id=session.voice_id)
            await self._turns.check_voice(options.voice_id, context)
            conversation = Conversation(self._turns, self._sessions, self._settings, config, options, session, context)
            async for event in conversation.run(request_iterator):
                yield event

    # --- Other RPCs -------------------------------------------------------------------------

    async def Synthesize(
        self, request: gateway_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.SynthesizeResponse]:
        # No voice named: the configured voice of the text's language, as for a reply.
        voice_id = request.voice_id or self._turns.voice_for(request.text)
        options = ReplyOptions(voice_id, request.controls, sample_rate_hz=request.sample_rate_hz)
        async for response in self._turns.synthesize(request.text, voice_id, options, context):
            yield gateway_pb2.SynthesizeResponse(audio=response.audio)

    async def Transcribe(
        self, request: gateway_pb2.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TranscribeResponse:
        await run_blocking(self._check_audio, request.audio)
        transcript = await self._turns.transcribe(request.audio, request.language, context)
        return gateway_pb2.TranscribeResponse(
            transcript=transcript, duration_seconds=transcript.end_seconds - transcript.start_seconds
        )

    async def ListVoices(
        self, request: gateway_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListVoicesResponse:
        response = await self._stages.tts.unary(
            "ListVoices",
            tts_pb2.ListVoicesRequest(language=request.language),
            self._turns.timeout(context),
            self._turns.metadata(),
        )
        return gateway_pb2.ListVoicesResponse(voices=response.voices)

    # --- Voices ---------------------------------------------------------------------------

    async def RegisterVoice(
        self, request: gateway_pb2.RegisterVoiceRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RegisterVoiceResponse:
        """Validate (fail fast) → prompt tokens from the tokenizer stage (trimmed, as Step-Audio's
        wav2token) when its engine makes tokens → the TTS stage stores the voice."""
        wav = await run_blocking(prompt_wav_from, request.audio.content, declared_format(request.audio.format))
        await run_blocking(
            check_registration,
            request.voice_id,
            request.display_name,
            wav,
            request.transcript,
            tuple(request.language_codes),
        )
        metadata = self._turns.metadata()
        known = await self._stages.tts.unary(
            "ListVoices", tts_pb2.ListVoicesRequest(), self._turns.timeout(context), metadata
        )
        taken = {voice.voice_id.casefold(): voice.voice_id for voice in known.voices}
        if request.voice_id.casefold() in taken:
            raise AlreadyExists(
                f"voice id {request.voice_id!r} is taken ({taken[request.voice_id.casefold()]!r}): pick another "
                "id or delete the cloned voice first"
            )
        info = await self._stages.tokenizer.unary(
            "GetEngineInfo", tokenizer_pb2.GetEngineInfoRequest(), self._turns.timeout(context), metadata
        )
        tokens: list[int] = []
        if info.supports_tokens:
            response = await self._stages.tokenizer.unary(
                "Tokenize",
                tokenizer_pb2.TokenizeRequest(
                    config=tokenizer_pb2.TokenizeConfig(emit_tokens=True, trim_silence=True),
                    audio=audio_pb2.Audio(
                        format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV), content=wav
                    ),
                ),
                self._turns.timeout(context),
                metadata,
            )
            tokens = list(response.tokens.token_ids)
        registered = await self._stages.tts.unary(
            "RegisterVoice",
            tts_pb2.RegisterVoiceRequest(
                voice_id=request.voice_id,
                display_name=request.display_name,
                audio=audio_pb2.Audio(format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV), content=wav),
                transcript=request.transcript,
                prompt_tokens=tokens,
                language_codes=request.language_codes,
            ),
            self._turns.timeout(context),
            metadata,
        )
        return gateway_pb2.RegisterVoiceResponse(voice=registered.voice, prompt_token_count=len(tokens))

    async def DeleteVoice(
        self, request: gateway_pb2.DeleteVoiceRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DeleteVoiceResponse:
        if not request.voice_id:
            raise InvalidArgument("voice_id is empty: name the cloned voice to delete")
        await self._stages.tts.unary(
            "DeleteVoice",
            tts_pb2.DeleteVoiceRequest(voice_id=request.voice_id),
            self._turns.timeout(context),
            self._turns.metadata(),
        )
        return gateway_pb2.DeleteVoiceResponse()

    # --- Sessions -------------------------------------------------------------------------

    async def CreateSession(
        self, request: gateway_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CreateSessionResponse:
        await self._turns.check_voice(request.voice_id, context)
        self._check_system_prompt(request.system_prompt, "system_prompt")
        system_prompt = request.system_prompt.strip() or self._settings.default_system_prompt
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
