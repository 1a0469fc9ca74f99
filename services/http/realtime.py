"""``/v1/realtime``: OpenAI's Realtime event protocol over a WebSocket, served by the gateway.

Per connection: one gateway session (created at the first turn) holds the conversation, so spoken and typed turns
share one history. With server VAD (the default) microphone audio streams into a gateway StreamingChat, whose VAD
ends each utterance and answers it, and whose barge-in cancels a reply the user talks over. With
``turn_detection: null`` the client commits its audio buffer and asks for each response (``response.create``),
which is a gateway Chat turn; so is a response to typed ``conversation.item.create`` messages, in either mode.
The wire format (both the beta and the GA dialect) is in ``realtime_events``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import soxr
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.common.concurrency import run_blocking
from services.http import g711
from services.http.errors import api_error_from_grpc
from services.http.gateway_calls import grpc_metadata
from services.http.realtime_events import (
    BETA,
    GA,
    RealtimeError,
    Response,
    SessionConfig,
    VoiceControlChoice,
    apply_session_update,
    error_object,
    is_ga_session,
    new_id,
    render_session,
    usage_of,
    user_item,
    wire_name,
)
from services.http.settings import HttpSettings
from services.http.speech_options import voice_controls

log = logging.getLogger(__name__)
router = APIRouter()

BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
API_KEY_SUBPROTOCOL = "openai-insecure-api-key."  # browsers cannot set headers: OpenAI's way to pass a key
MIN_COMMIT_SECONDS = 0.1  # OpenAI's: a shorter buffer is refused on commit
LARGE_PAYLOAD_CHARS = 64 * 1024  # base64 decoded off the event loop above this
_SEND_FAILURES = (WebSocketDisconnect, RuntimeError, OSError)
_INTERNAL = RealtimeError("internal error; see the HTTP service's log", type="server_error")


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    settings: HttpSettings = websocket.app.state.settings
    offered = websocket.scope.get("subprotocols") or []
    beta = "realtime=v1" in websocket.headers.get("openai-beta", "") or BETA_SUBPROTOCOL in offered
    # A browser that offers subprotocols needs one chosen, or it drops the connection.
    chosen = "realtime" if "realtime" in offered else (offered[0] if offered else None)
    await websocket.accept(subprotocol=chosen)
    model = websocket.query_params.get("model") or settings.chat_model_id
    connection = RealtimeConnection(
        websocket, websocket.app.state.gateway.stub, settings, _metadata(websocket, offered), beta, model
    )
    await connection.serve()


def _metadata(websocket: WebSocket, offered: list[str]) -> tuple[tuple[str, str], ...]:
    """The caller's credentials for the gateway: its Authorization header, else a browser's API-key subprotocol."""
    metadata = grpc_metadata(websocket)
    if any(name == "authorization" for name, _ in metadata):
        return metadata
    for protocol in offered:
        key = protocol.removeprefix(API_KEY_SUBPROTOCOL)
        if key != protocol and key.isascii() and key.isprintable():
            return (*metadata, ("authorization", f"Bearer {key}"))
    return metadata


@dataclass(eq=False)  # compared (and hashed) by identity
class _VadStream:
    """A gateway StreamingChat: the microphone audio of server-VAD turns goes in, speech events and replies out."""

    config: gateway_pb2.StreamingChatConfig
    base_ms: int  # audio of the connection before this stream began: speech offsets count from the first append
    requests: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=32))
    call: Any = None
    reader: asyncio.Task | None = None
    speech_item: str | None = None  # the user item being spoken now
    spoken_items: list[tuple[str, float]] = field(default_factory=list)  # (item id, speech end in s), unanswered
    response: Response | None = None
    cancel_reason: str | None = None  # set when this side cancels the call
    ending: bool = False  # half-closed: it answers what it heard, then ends
    closed: bool = False  # the call is over

    async def messages(self) -> AsyncIterator[gateway_pb2.StreamingChatRequest]:
        yield gateway_pb2.StreamingChatRequest(config=self.config)
        while (message := await self.requests.get()) is not None:
            yield message

    async def send(self, message: gateway_pb2.StreamingChatRequest | None) -> None:
        """Queue a request (None half-closes); waits while the queue is full, which slows the client down."""
        if not self.closed:
            await self.requests.put(message)

    def close(self) -> None:
        """The call is over: nothing more is queued, and a sender waiting for room is let go."""
        self.closed = True
        while not self.requests.empty():
            self.requests.get_nowait()

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self.call.cancel()

    def item_for(self, transcript: speech_pb2.Transcript) -> str | None:
        """The spoken item a transcript belongs to: the latest utterance that ended before the transcribed audio did
        (an utterance heard as silence gets no transcript, so its item is skipped)."""
        ended = [entry for entry in self.spoken_items if entry[1] <= transcript.end_seconds + 1e-3]
        chosen = ended[-1] if ended else (self.spoken_items[0] if self.spoken_items else None)
        if chosen is None:
            return None
        self.spoken_items = self.spoken_items[self.spoken_items.index(chosen) + 1 :]
        return chosen[0]


@dataclass
class _PendingInput:
    """User input committed to the conversation and not yet answered (manual turns and typed messages)."""

    texts: list[str] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)  # PCM16 at the input rate
    audio_items: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.texts or self.audio)

    def drop_audio(self) -> None:
        self.audio.clear()
        self.audio_items.clear()


class RealtimeConnection:
    """One client's WebSocket: its session configuration, input buffer, gateway session, stream and responses."""

    def __init__(
        self,
        websocket: WebSocket,
        gateway: gateway_pb2_grpc.GatewayServiceStub,
        settings: HttpSettings,
        metadata: tuple[tuple[str, str], ...],
        beta: bool,
        model: str,
    ) -> None:
        self._ws = websocket
        self._gateway = gateway
        self._settings = settings
        self._metadata = metadata
        self._beta = beta  # a client that asked for the beta protocol keeps it
        self._dialect = BETA
        self._config = SessionConfig(
            id=new_id("sess"), model=model, transcription_model=settings.transcription_model_id
        )
        self._voice_id = ""  # the cluster voice of config.voice ("" = the cluster's choice)
        self._voice_support: dict[str, tuple[str, ...]] | None = None  # voice id -> supported_controls (ListVoices)
        self._ignored_controls: tuple[str, ...] = ()  # of config.voice_controls, those the session's voice lacks
        self._started = time.monotonic()
        self._gateway_session = ""
        self._gateway_session_prompt = ""
        self._buffer = bytearray()  # uncommitted input audio (manual turns), PCM16 at the input rate
        self._pending = _PendingInput()
        self._stream: _VadStream | None = None  # the stream new audio goes to
        self._streams: set[_VadStream] = set()  # every stream still running (one that was committed ends later)
        self._audio_ms = 0  # input audio appended so far, in ms
        self._response: Response | None = None  # the response of a manual turn
        self._response_task: asyncio.Task | None = None
        self._last_item: str | None = None
        self._items: set[str] = set()
        self._send_lock = asyncio.Lock()
        self._socket_open = True

    # --- the socket -------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        await self._send({"type": "session.created", "session": self._rendered_session()})
        try:
            while (message := await self._receive()) is not None:
                await self._handle(message)
        except WebSocketDisconnect:
            pass
        finally:
            self._socket_open = False
            await self._shut_down()

    async def _receive(self) -> dict | None:
        """The next client message; None when the connection is over (the client left, or a limit closed it)."""
        settings = self._settings
        while True:
            left = settings.realtime_max_session_seconds - (time.monotonic() - self._started)
            if left <= 0:
                return await self._close_for(
                    "session_expired", f"the session reached its limit of {settings.realtime_max_session_seconds:g} s"
                    " (HTTP_REALTIME_MAX_SESSION_SECONDS): open a new connection"
                )  # fmt: skip
            try:
                message = await asyncio.wait_for(self._ws.receive(), min(left, settings.realtime_idle_timeout_seconds))
            except TimeoutError:
                if self._replying() or left <= settings.realtime_idle_timeout_seconds:
                    continue  # a reply is streaming to a listening client; or the session limit is due
                return await self._close_for(
                    "idle_timeout", f"no event for {settings.realtime_idle_timeout_seconds:g} s "
                    "(HTTP_REALTIME_IDLE_TIMEOUT_SECONDS): closing"
                )  # fmt: skip
            if message["type"] == "websocket.disconnect":
                return None
            return message

    async def _close_for(self, code: str, message: str) -> None:
        await self._send_error(RealtimeError(message, code=code))
        async with self._send_lock:
            if self._socket_open:
                self._socket_open = False
                try:
                    await self._ws.close(1000, code)
                except _SEND_FAILURES:
                    pass
        return None

    async def _send(self, event: dict) -> None:
        """Send a server event (named for the connection's dialect); a client that has gone is not an error."""
        event_type = event.pop("type")
        wire = {"event_id": new_id("event"), "type": wire_name(event_type, self._dialect), **event}
        async with self._send_lock:
            if not self._socket_open:
                return
            try:
                await self._ws.send_text(json.dumps(wire, ensure_ascii=False))
            except _SEND_FAILURES:
                self._socket_open = False

    async def _send_all(self, events: list[dict]) -> None:
        for event in events:
            await self._send(event)

    async def _send_error(self, error: RealtimeError, client_event_id: str | None = None) -> None:
        await self._send({"type": "error", "error": error_object(error, client_event_id)})

    async def _handle(self, message: dict) -> None:
        client_event_id = None
        try:
            event = self._parse(message)
            client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            handler = _HANDLERS.get(event["type"])
            if handler is None:
                raise RealtimeError(
                    f"Invalid value: {event['type']!r}. Supported values are: {', '.join(_HANDLERS)}.",
                    param="type",
                    code="invalid_value",
                )
            await handler(self, event)
        except RealtimeError as error:
            await self._send_error(error, client_event_id)
        except grpc.aio.AioRpcError as error:
            await self._send_error(_from_grpc(error), client_event_id)
        except Exception:  # a bug must not take the socket down: the client hears of it
            log.exception("realtime event failed")
            await self._send_error(_INTERNAL, client_event_id)

    def _parse(self, message: dict) -> dict:
        text = message.get("text")
        if text is None:
            raise RealtimeError("binary messages are not supported: send each event as a JSON text message")
        limit = self._settings.realtime_max_message_bytes
        if len(text) > limit // 4 and len(text.encode()) > limit:
            raise RealtimeError(
                f"the event is larger than {limit} bytes (HTTP_REALTIME_MAX_MESSAGE_BYTES): send audio in smaller "
                "appends",
                code="message_too_large",
            )
        try:
            event = json.loads(text)
        except json.JSONDecodeError as error:
            raise RealtimeError(f"the message is not valid JSON: {error}", code="invalid_json") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise RealtimeError("an event must be a JSON object with a string 'type'", param="type")
        return event

    # --- session.update -------------------------------------------------------------------------------------

    async def _on_session_update(self, event: dict) -> None:
        session = event.get("session")
        if isinstance(session, dict) and is_ga_session(session) and not self._beta:
            self._dialect = GA
        config = apply_session_update(self._config, session, self._speed_range())
        voice_id = await self._voice(config.voice, "session.voice") if config.voice != self._config.voice else None
        if config.input_format != self._config.input_format:
            self._buffer.clear()  # audio in the old format cannot be mixed with the new
            self._pending.drop_audio()
        ignored = await self._unsupported(config.voice_controls, self._voice_id if voice_id is None else voice_id)
        self._config = config
        if voice_id is not None:
            self._voice_id = voice_id
        self._ignored_controls = ignored
        self._restart_stream_if_changed()
        await self._send({"type": "session.updated", "session": self._rendered_session()})

    def _rendered_session(self) -> dict:
        return render_session(self._config, self._dialect, self._ignored_controls)

    def _speed_range(self) -> tuple[float, float]:
        return (self._settings.min_speed, self._settings.max_speed)

    async def _voice(self, name: str, param: str) -> str:
        """The cluster voice id for a voice name (OpenAI's names are aliases); NOT_FOUND-style error if unknown."""
        voice_id = self._settings.voice_aliases.get(name, name)
        if not voice_id:
            return ""
        known = list(await self._list_voices())
        if voice_id not in known:
            raise RealtimeError(
                f"unknown voice {name!r}; available voices: {', '.join(known + list(self._settings.voice_aliases))}",
                param=param,
                code="invalid_value",
            )
        return voice_id

    async def _list_voices(self) -> dict[str, tuple[str, ...]]:
        """The TTS stage's voices and the controls each honours, asked now (remembered for ``_unsupported``)."""
        voices = await self._gateway.ListVoices(
            gateway_pb2.ListVoicesRequest(), timeout=self._settings.voices_timeout_seconds, metadata=self._metadata
        )
        self._voice_support = {voice.voice_id: tuple(voice.supported_controls) for voice in voices.voices}
        return self._voice_support

    async def _unsupported(self, choice: VoiceControlChoice, voice_id: str) -> tuple[str, ...]:
        """The controls of ``choice`` that ``voice_id`` does not honour: they are left out of its requests (as
        /v1/audio/speech treats ``instructions``) rather than fail every reply. With no voice chosen (the gateway
        picks one by the reply's language) only what every voice honours is kept. The voices are asked once a
        connection (and again when a new voice is checked)."""
        requested = choice.requested()
        if not requested:
            return ()
        support = self._voice_support if self._voice_support is not None else await self._list_voices()
        candidates = [support.get(voice_id, ())] if voice_id else list(support.values())
        honoured = set.intersection(*map(set, candidates)) if candidates else set()
        return tuple(name for name in requested if name not in honoured)

    def _restart_stream_if_changed(self) -> None:
        """A StreamingChat is configured once: when the session's settings no longer match it, it is cancelled, and
        the next audio opens one with the new settings."""
        stream = self._stream
        if stream is None or stream.ending:
            return
        instructions_changed = bool(self._gateway_session) and self._config.instructions != self._gateway_session_prompt
        if self._config.turn_detection is None or instructions_changed or stream.config != self._stream_config():
            stream.cancel("client_cancelled")
            self._stream = None

    # --- input audio ----------------------------------------------------------------------------------------

    async def _on_append(self, event: dict) -> None:
        pcm = await self._input_audio(event.get("audio"), "audio")
        if not pcm:
            return
        rate = self._config.input_format.sample_rate_hz
        if self._config.turn_detection is None:
            self._check_buffer_room(len(pcm))
            self._buffer += pcm
        else:
            stream = self._stream or await self._open_stream()
            await stream.send(gateway_pb2.StreamingChatRequest(audio_content=pcm))
        self._audio_ms += len(pcm) * 1000 // (2 * rate)

    async def _input_audio(self, value: Any, param: str) -> bytes:
        """PCM16 at the input rate from a base64 string in the session's input format."""
        if not isinstance(value, str):
            raise RealtimeError(f"'{param}' must be a base64 string of audio", param=param)
        try:
            if len(value) > LARGE_PAYLOAD_CHARS:
                data = await run_blocking(_b64decode, value)
            else:
                data = _b64decode(value)
        except (binascii.Error, ValueError):
            raise RealtimeError(
                f"'{param}' is not valid base64: send the audio bytes base64-encoded", param=param, code="invalid_value"
            ) from None
        audio_format = self._config.input_format
        if audio_format.name in g711.FORMATS:
            return g711.decode(data, audio_format.name)
        if len(data) % 2:
            raise RealtimeError(
                f"'{param}' holds {len(data)} bytes: pcm16 audio has 2 bytes a sample",
                param=param,
                code="invalid_value",
            )
        return data

    def _check_buffer_room(self, adding: int) -> None:
        rate = self._config.input_format.sample_rate_hz
        limit = self._settings.realtime_max_buffer_seconds
        if (len(self._buffer) + len(self._pending.audio) + adding) / (2 * rate) > limit:
            raise RealtimeError(
                f"the input audio buffer would hold more than {limit:g} s (HTTP_REALTIME_MAX_BUFFER_SECONDS): commit "
                "and answer it, or clear it",
                code="input_audio_buffer_full",
            )

    async def _on_commit(self, event: dict) -> None:
        if self._config.turn_detection is not None:
            await self._end_utterance()
            return
        rate = self._config.input_format.sample_rate_hz
        if len(self._buffer) < MIN_COMMIT_SECONDS * rate * 2:
            raise RealtimeError(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_SECONDS * 1000:g}ms of audio, but buffer only has "
                f"{len(self._buffer) * 1000 / (2 * rate):.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = new_id("item")
        self._pending.audio += self._buffer
        self._pending.audio_items.append(item_id)
        self._buffer.clear()
        await self._commit_audio_item(item_id)

    async def _end_utterance(self) -> None:
        """Server VAD: commit ends the utterance being spoken now; the stream answers it, then ends."""
        stream = self._stream
        if stream is None or stream.speech_item is None:
            raise RealtimeError(
                "Error committing input audio buffer: no speech since the last turn.",
                code="input_audio_buffer_commit_empty",
            )
        stream.ending = True
        await stream.send(None)
        self._stream = None

    async def _commit_audio_item(self, item_id: str) -> None:
        await self._send(
            {"type": "input_audio_buffer.committed", "previous_item_id": self._last_item, "item_id": item_id}
        )
        await self._item_created(user_item(item_id, [{"type": "input_audio", "transcript": None}]))

    async def _item_created(self, item: dict) -> None:
        await self._send({"type": "conversation.item.created", "previous_item_id": self._last_item, "item": item})
        if self._dialect == GA:
            await self._send({"type": "conversation.item.done", "previous_item_id": self._last_item, "item": item})
        self._last_item = item["id"]
        self._items.add(item["id"])

    async def _on_clear(self, event: dict) -> None:
        self._buffer.clear()
        stream = self._stream
        if stream is not None and stream.speech_item is not None:
            # The utterance being spoken is already at the gateway: dropping it means dropping its stream.
            stream.cancel("client_cancelled")
            self._stream = None
        await self._send({"type": "input_audio_buffer.cleared"})

    # --- conversation items ---------------------------------------------------------------------------------

    async def _on_item_create(self, event: dict) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            raise RealtimeError("'item' must be an object", param="item")
        if item.get("type", "message") != "message" or item.get("role") != "user":
            raise RealtimeError(
                "only user messages can be added: the gateway keeps the assistant's turns itself, and the session's "
                "instructions set the system prompt",
                param="item.role",
                code="unsupported_item",
            )
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise RealtimeError("'item.content' must be a non-empty list", param="item.content")
        texts, audio = await self._item_content(content)
        if audio:
            self._check_buffer_room(len(audio))
        item_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else new_id("item")
        self._pending.texts += texts
        if audio:
            self._pending.audio += audio
            self._pending.audio_items.append(item_id)
        shown = [{"type": "input_text", "text": text} for text in texts] + (
            [{"type": "input_audio", "transcript": None}] if audio else []
        )
        await self._item_created(user_item(item_id, shown))

    async def _item_content(self, content: list) -> tuple[list[str], bytes]:
        texts: list[str] = []
        audio = bytearray()
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "input_audio":
                audio += await self._input_audio(part.get("audio"), f"item.content.{index}.audio")
            else:
                raise RealtimeError(
                    "a user message's content parts must be input_text (with 'text') or input_audio (with 'audio')",
                    param=f"item.content.{index}",
                    code="invalid_value",
                )
        return texts, bytes(audio)

    async def _on_item_truncate(self, event: dict) -> None:
        """The client's playback position of a reply: the gateway keeps in the history what was heard."""
        item_id = event.get("item_id")
        audio_end_ms = event.get("audio_end_ms")
        if item_id not in self._items:
            raise RealtimeError(f"item {item_id!r} does not exist", param="item_id", code="item_not_found")
        if isinstance(audio_end_ms, bool) or not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            raise RealtimeError("'audio_end_ms' must be a non-negative integer", param="audio_end_ms")
        stream = self._stream
        if stream is not None and stream.response is not None and stream.response.item_id == item_id:
            playback = gateway_pb2.PlaybackProgress(played_seconds=audio_end_ms / 1000)
            await stream.send(gateway_pb2.StreamingChatRequest(playback=playback))
        await self._send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    # --- responses ------------------------------------------------------------------------------------------

    def _replying(self) -> bool:
        stream_reply = self._stream is not None and self._stream.response is not None
        return stream_reply or (self._response is not None and not self._response.done)

    async def _on_response_create(self, event: dict) -> None:
        if self._replying():
            raise RealtimeError(
                "Conversation already has an active response in progress: wait for response.done or cancel it",
                code="conversation_already_has_active_response",
            )
        if not self._pending:
            raise RealtimeError(
                "nothing to respond to: add a user message (conversation.item.create) or commit input audio first",
                code="no_input",
            )
        overrides = event.get("response") or {}
        config = apply_session_update(self._config, overrides, self._speed_range(), where="response")
        if overrides.get("conversation") == "none" or "input" in overrides:
            raise RealtimeError(
                "out-of-band responses (conversation 'none', response.input) are not supported: every response "
                "answers the conversation's new items",
                param="response.conversation",
                code="unsupported_value",
            )
        voice_id = self._voice_id
        if config.voice != self._config.voice:
            voice_id = await self._voice(config.voice, "response.voice")
        controls = _controls(config, await self._unsupported(config.voice_controls, voice_id))
        pending, self._pending = self._pending, _PendingInput()
        self._response = Response(config, self._dialect, self._last_item)
        self._response_task = asyncio.create_task(self._respond(self._response, pending, voice_id, controls))

    async def _respond(
        self, response: Response, pending: _PendingInput, voice_id: str, controls: speech_pb2.VoiceControls
    ) -> None:
        """A manual turn: one gateway Chat in the connection's gateway session."""
        await self._open_response(response)
        call = None
        try:
            request = await self._chat_request(response.config, pending, voice_id, controls)
            call = self._gateway.Chat(request, timeout=self._call_timeout(), metadata=self._metadata)
            async for message in call:
                await self._on_reply_event(response, message, pending.audio_items[-1:])
        except asyncio.CancelledError:
            if call is not None:
                call.cancel()
            if self._socket_open:  # response.cancel, not the connection closing
                await self._send_all(response.closing("cancelled", reason="client_cancelled"))
            return
        except grpc.aio.AioRpcError as error:
            await self._fail(response, _from_grpc(error))
        except Exception:
            log.exception("realtime response failed")
            await self._fail(response, _INTERNAL)

    async def _open_response(self, response: Response) -> None:
        await self._send_all(response.opening())
        self._last_item = response.item_id
        self._items.add(response.item_id)

    async def _fail(self, response: Response, error: RealtimeError) -> None:
        if not response.done:
            await self._send_all(response.closing("failed", error=error_object(error)))
        await self._send_error(error)

    async def _chat_request(
        self, config: SessionConfig, pending: _PendingInput, voice_id: str, controls: speech_pb2.VoiceControls
    ) -> gateway_pb2.ChatRequest:
        audio = None
        if pending.audio:
            audio = audio_pb2.Audio(
                format=audio_pb2.AudioFormat(
                    encoding=audio_pb2.AUDIO_ENCODING_PCM16,
                    sample_rate_hz=config.input_format.sample_rate_hz,
                    channels=1,
                ),
                content=bytes(pending.audio),
            )
        return gateway_pb2.ChatRequest(
            session_id=await self._gateway_session_id(),
            input=gateway_pb2.TurnInput(text="\n".join(pending.texts), audio=audio),
            voice_id=voice_id,
            controls=controls,
            sampling=_sampling(config),
            sample_rate_hz=config.output_format.sample_rate_hz,
            text_only=not config.speaks,
        )

    async def _on_reply_event(self, response: Response, message: Any, audio_items: list[str]) -> None:
        """A Chat or StreamingChat reply event, as the response's server events."""
        kind = message.WhichOneof("event")
        if kind == "user_transcript" and audio_items:
            await self._send_transcript(audio_items[0], message.user_transcript)
        elif kind == "reply_text_delta":
            await self._send(response.text_delta(message.reply_text_delta))
        elif kind == "audio" and response.config.speaks:
            await self._send_audio(response, message.audio)
        elif kind == "summary":
            if response.resampler is not None:
                await self._send_pcm(response, _resampled(response, b"", 0, last=True))
            usage = usage_of(message.summary.prompt_tokens, message.summary.completion_tokens)
            await self._send_all(response.closing("completed", usage=usage))
        elif kind == "interrupted":
            await self._send_all(response.closing("cancelled", reason="turn_detected"))

    async def _send_transcript(self, item_id: str, transcript: speech_pb2.Transcript) -> None:
        seconds = max(transcript.end_seconds - transcript.start_seconds, 0.0)
        await self._send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": transcript.text,
                "usage": {"type": "duration", "seconds": round(seconds, 3)},
            }
        )

    async def _send_audio(self, response: Response, chunk: audio_pb2.AudioChunk) -> None:
        rate = chunk.format.sample_rate_hz or response.config.output_format.sample_rate_hz
        await self._send_pcm(response, _resampled(response, chunk.content, rate))

    async def _send_pcm(self, response: Response, pcm: bytes) -> None:
        if not pcm:
            return
        output = response.config.output_format
        data = g711.encode(pcm, output.name) if output.name in g711.FORMATS else pcm
        await self._send(response.audio_delta(base64.b64encode(data).decode("ascii"), len(pcm)))

    async def _on_response_cancel(self, event: dict) -> None:
        stream = self._stream
        if self._response is not None and not self._response.done and self._response_task is not None:
            self._response_task.cancel()
            await asyncio.gather(self._response_task, return_exceptions=True)
        elif stream is not None and stream.response is not None:
            stream.cancel("client_cancelled")  # its reader ends the response; the next audio opens a new stream
            self._stream = None
        else:
            raise RealtimeError("Cancellation failed: no active response found", code="response_cancel_not_active")

    # --- the gateway ----------------------------------------------------------------------------------------

    def _call_timeout(self) -> float:
        left = self._settings.realtime_max_session_seconds - (time.monotonic() - self._started)
        return max(min(self._settings.chat_timeout_seconds, left), 1.0)

    async def _gateway_session_id(self) -> str:
        """The gateway session of this connection, created at its first turn; a new one when the instructions
        changed (the gateway keeps a session's system prompt; the earlier history is then not carried over)."""
        if self._gateway_session and self._gateway_session_prompt == self._config.instructions:
            return self._gateway_session
        await self._delete_gateway_session()
        created = await self._gateway.CreateSession(
            gateway_pb2.CreateSessionRequest(system_prompt=self._config.instructions, voice_id=self._voice_id),
            timeout=self._settings.chat_timeout_seconds,
            metadata=self._metadata,
        )
        self._gateway_session = created.session.session_id
        self._gateway_session_prompt = self._config.instructions
        return self._gateway_session

    async def _delete_gateway_session(self) -> None:
        session_id, self._gateway_session = self._gateway_session, ""
        if not session_id:
            return
        try:
            await self._gateway.DeleteSession(
                gateway_pb2.DeleteSessionRequest(session_id=session_id), timeout=5.0, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:  # it expires on its own (GATEWAY_SESSION_TTL_SECONDS)
            log.warning("could not delete gateway session %s: %s", session_id, error.details())

    def _stream_config(self) -> gateway_pb2.StreamingChatConfig:
        config = self._config
        turn_detection = config.turn_detection
        return gateway_pb2.StreamingChatConfig(
            input_format=audio_pb2.AudioFormat(
                encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=config.input_format.sample_rate_hz, channels=1
            ),
            session_id=self._gateway_session,
            voice_id=self._voice_id,
            controls=_controls(config, self._ignored_controls),
            sampling=_sampling(config),
            sample_rate_hz=config.output_format.sample_rate_hz,
            language=config.language,
            disable_barge_in=turn_detection is not None and not turn_detection.interrupt_response,
        )

    async def _open_stream(self) -> _VadStream:
        await self._gateway_session_id()
        stream = _VadStream(self._stream_config(), self._audio_ms)
        left = self._settings.realtime_max_session_seconds - (time.monotonic() - self._started)
        stream.call = self._gateway.StreamingChat(stream.messages(), timeout=max(left, 1.0), metadata=self._metadata)
        stream.reader = asyncio.create_task(self._read_stream(stream, self._config))
        self._stream = stream
        self._streams.add(stream)
        return stream

    async def _read_stream(self, stream: _VadStream, config: SessionConfig) -> None:
        try:
            async for message in stream.call:
                await self._on_stream_event(stream, config, message)
        except asyncio.CancelledError:
            pass  # this side cancelled the call
        except grpc.aio.AioRpcError as error:
            if stream.cancel_reason is None:
                if stream.response is not None:
                    await self._fail(stream.response, _from_grpc(error))
                else:
                    await self._send_error(_from_grpc(error))
        except Exception:
            log.exception("realtime stream failed")
            await self._send_error(_INTERNAL)
        finally:
            stream.close()
            if stream.response is not None and not stream.response.done and self._socket_open:
                reason = stream.cancel_reason or "client_cancelled"
                await self._send_all(stream.response.closing("cancelled", reason=reason))
            self._streams.discard(stream)
            if self._stream is stream:
                self._stream = None

    async def _on_stream_event(
        self, stream: _VadStream, config: SessionConfig, message: gateway_pb2.StreamingChatResponse
    ) -> None:
        kind = message.WhichOneof("event")
        if kind == "user_speech":
            await self._on_user_speech(stream, message.user_speech)
        elif kind == "user_transcript":
            item_id = stream.item_for(message.user_transcript)
            if item_id is not None:
                await self._send_transcript(item_id, message.user_transcript)
            stream.response = Response(config, self._dialect, self._last_item)
            await self._open_response(stream.response)
        elif stream.response is not None:
            response = stream.response
            await self._on_reply_event(response, message, [])
            if response.done:
                stream.response = None

    async def _on_user_speech(self, stream: _VadStream, speech: gateway_pb2.UserSpeech) -> None:
        offset_ms = stream.base_ms + round(speech.offset_seconds * 1000)
        if speech.started:
            stream.speech_item = new_id("item")
            await self._send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": offset_ms,
                    "item_id": stream.speech_item,
                }
            )
            return
        item_id = stream.speech_item or new_id("item")
        stream.speech_item = None
        stream.spoken_items.append((item_id, speech.offset_seconds))
        await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": offset_ms, "item_id": item_id})
        await self._commit_audio_item(item_id)

    # --- the end --------------------------------------------------------------------------------------------

    async def _shut_down(self) -> None:
        """The client left (or a limit closed the socket): cancel what runs at the gateway, drop its session."""
        tasks = [stream.reader for stream in self._streams]
        for stream in self._streams:
            stream.cancel("client_cancelled")
        if self._response_task is not None:
            self._response_task.cancel()
            tasks.append(self._response_task)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._delete_gateway_session()


_HANDLERS = {
    "session.update": RealtimeConnection._on_session_update,
    "input_audio_buffer.append": RealtimeConnection._on_append,
    "input_audio_buffer.commit": RealtimeConnection._on_commit,
    "input_audio_buffer.clear": RealtimeConnection._on_clear,
    "conversation.item.create": RealtimeConnection._on_item_create,
    "conversation.item.truncate": RealtimeConnection._on_item_truncate,
    "response.create": RealtimeConnection._on_response_create,
    "response.cancel": RealtimeConnection._on_response_cancel,
}


def _b64decode(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _from_grpc(error: grpc.aio.AioRpcError) -> RealtimeError:
    api_error = api_error_from_grpc(error)
    return RealtimeError(api_error.message, param=api_error.param, code=api_error.code, type=api_error.type)


def _controls(config: SessionConfig, ignored: tuple[str, ...]) -> speech_pb2.VoiceControls:
    """The TTS controls of a reply: the session's voice controls but the ``ignored`` ones, and its speed."""
    choice = config.voice_controls.as_dict()
    controls = voice_controls({name: value for name, value in choice.items() if name not in ignored})
    if config.speed and config.speed != 1.0:
        controls.speed = config.speed
    return controls


def _sampling(config: SessionConfig) -> speech_pb2.SamplingParams:
    sampling = speech_pb2.SamplingParams()
    if config.temperature is not None:
        sampling.temperature = config.temperature
    if config.max_output_tokens is not None:
        sampling.max_tokens = config.max_output_tokens
    return sampling


def _resampled(response: Response, pcm: bytes, rate: int, last: bool = False) -> bytes:
    """Reply audio at the session's output rate. The gateway is asked for that rate; this only converts when a
    voice engine could not give it (``last``: the resampler's held-back tail, at the end of the reply)."""
    wanted = response.config.output_format.sample_rate_hz
    if response.resampler is None:
        if rate == wanted or last:
            return pcm
        response.resampler = soxr.ResampleStream(rate, wanted, 1, dtype="int16")
    samples = np.frombuffer(pcm, dtype="<i2")
    return response.resampler.resample_chunk(samples, last=last).astype("<i2").tobytes()
