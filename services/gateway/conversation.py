"""StreamingChat: a real-time voice conversation over one bidirectional stream.

Microphone audio goes to the tokenizer's streaming VAD + recognition; each utterance's final
transcript starts a reply (the same pipeline as Chat). Speech while a reply is playing cancels
it (barge-in); the history then keeps only the clauses the listener heard: by the client's
playback reports when it sends them, else by what had been sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
from stepaudio.common.v1 import speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio.tokenizer.v1 import tokenizer_pb2

from services.common.emotion import from_message
from services.common.errors import DeadlineExceeded, InvalidArgument
from services.gateway.events import EventQueue
from services.gateway.sessions import Session, SessionStore, Turn
from services.gateway.settings import GatewaySettings
from services.gateway.stages import seconds
from services.gateway.turns import DONE, ReplyOptions, TurnRunner, TurnState, finish_into


class Conversation:
    def __init__(
        self,
        turns: TurnRunner,
        sessions: SessionStore,
        settings: GatewaySettings,
        config: gateway_pb2.StreamingChatConfig,
        options: ReplyOptions,
        session: Session | None,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self._turns = turns
        self._sessions = sessions
        self._settings = settings
        self._config = config
        self._options = options
        self._persistent = session is not None
        self._session = session or Session(session_id="", system_prompt=config.system_prompt)
        self._context = context
        self._events = EventQueue(settings.max_buffered_events)
        self._reply_task: asyncio.Task | None = None
        self._speech_ended_at = 0.0
        self._played_seconds: float | None = None  # None: the client sends no playback reports

    async def run(
        self, requests: AsyncIterator[gateway_pb2.StreamingChatRequest]
    ) -> AsyncIterator[gateway_pb2.StreamingChatResponse]:
        driver = asyncio.create_task(finish_into(self._events, lambda: self._drive(requests)))
        try:
            while (event := await self._events.get()) is not DONE:
                yield event  # type: ignore[misc]
        finally:
            self._events.close()  # first: a reply being cancelled now must not wait for room in the queue
            for task in (driver, self._reply_task):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (driver, self._reply_task) if t), return_exceptions=True)

    async def _emit(self, **event: object) -> None:
        await self._events.put(gateway_pb2.StreamingChatResponse(**event))

    async def _drive(self, requests: AsyncIterator[gateway_pb2.StreamingChatRequest]) -> None:
        """The tokenizer stream lives as long as the conversation: the client's deadline, else
        ``max_stream_seconds`` (each reply's chat and tts calls have their own)."""
        limit = self._turns.timeout(self._context, default=self._settings.max_stream_seconds)
        call = self._turns.stages.tokenizer.stream(
            "StreamingTokenize", self._tokenizer_requests(requests), limit, self._turns.metadata()
        )
        try:
            await self._listen(call)
        except DeadlineExceeded:
            if self._context.time_remaining() is None:
                raise DeadlineExceeded(
                    f"the conversation reached its limit of {seconds(limit)} s (GATEWAY_MAX_STREAM_SECONDS): "
                    "start a new stream"
                ) from None
            raise
        await self._finish_reply()

    async def _listen(self, call: AsyncIterator[tokenizer_pb2.StreamingTokenizeResponse]) -> None:
        async for response in call:
            kind = response.WhichOneof("result")
            if kind == "speech_event":
                started = response.speech_event.type == tokenizer_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED
                await self._emit(
                    user_speech=gateway_pb2.UserSpeech(
                        started=started, offset_seconds=response.speech_event.offset_seconds
                    )
                )
                if started:
                    await self._barge_in()
                else:
                    self._speech_ended_at = time.perf_counter()
            elif kind == "transcript" and response.transcript.is_final and response.transcript.text.strip():
                await self._finish_reply()
                self._reply_task = asyncio.create_task(self._reply(response.transcript))
                self._reply_task.add_done_callback(self._report_failure)

    async def _tokenizer_requests(
        self, requests: AsyncIterator[gateway_pb2.StreamingChatRequest]
    ) -> AsyncIterator[tokenizer_pb2.StreamingTokenizeRequest]:
        yield tokenizer_pb2.StreamingTokenizeRequest(
            config=tokenizer_pb2.TokenizeConfig(
                format=self._config.input_format, emit_transcript=True, language=self._config.language
            )
        )
        try:
            async for message in requests:
                kind = message.WhichOneof("request")
                if kind == "audio_content":
                    yield tokenizer_pb2.StreamingTokenizeRequest(audio_content=message.audio_content)
                elif kind == "playback":
                    self._played_seconds = message.playback.played_seconds
                else:
                    raise InvalidArgument("a stream takes one config, first; then audio or playback")
        except Exception as error:  # raised here, grpc would only cancel the tokenizer call: report it instead
            self._events.fail(error)

    def _report_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._events.fail(task.exception())

    async def _finish_reply(self) -> None:
        """Replies are sequential: wait for the one in flight (barge-in disabled, or stream end)."""
        if self._reply_task is not None:
            await asyncio.gather(self._reply_task, return_exceptions=True)

    async def _barge_in(self) -> None:
        task = self._reply_task
        if task is None or task.done() or self._config.disable_barge_in:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _reply(self, transcript: speech_pb2.Transcript) -> None:
        state = TurnState(started=self._speech_ended_at or time.perf_counter())
        self._played_seconds = None if self._played_seconds is None else 0.0
        await self._emit(user_transcript=transcript)
        user_text = transcript.text.strip()
        state.user_emotion = from_message(transcript.emotion)
        messages = await self._turns.prompt(
            self._session,
            self._config.system_prompt,
            user_text,
            self._options,
            self._context,
            user_emotion=state.user_emotion,
        )
        try:
            async for event in self._turns.reply(messages, self._options, state, self._context):
                kind = event.WhichOneof("event")
                await self._emit(**{kind: getattr(event, kind)})
        except asyncio.CancelledError:
            heard = state.audio_seconds if self._played_seconds is None else self._played_seconds
            kept = state.text_played_by(heard)
            await self._remember(user_text, kept)
            interrupted = gateway_pb2.ReplyInterrupted(kept_text=kept, sent_audio_seconds=state.audio_seconds)
            await self._emit(interrupted=interrupted)
            raise
        await self._remember(user_text, state.reply_text)
        await self._emit(summary=self._turns.summary(state, user_text, self._session.session_id, self._options))

    async def _remember(self, user_text: str, reply_text: str) -> None:
        turns = [Turn("user", user_text)] + ([Turn("assistant", reply_text)] if reply_text else [])
        keep = self._settings.max_stored_turns
        self._session.add(turns, keep)
        if self._persistent:
            async with self._sessions.lock(self._session.session_id):
                stored = await self._sessions.get(self._session.session_id)
                stored.add(turns, keep)
                await self._sessions.save(stored)
