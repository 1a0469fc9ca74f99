"""``POST /v1/chat/completions`` (text and audio, streamed or not) and ``GET /v1/models``, OpenAI-compatible, over
the gateway's Chat.

The gateway's Chat takes one user input (text and/or audio) and a system prompt, not a message list: its
conversations live in sessions. A request's earlier messages are therefore carried as text inside the system prompt
(the system message first, then "Earlier in this conversation:" and the newest turns that fit in
HTTP_MAX_HISTORY_CHARS). Earlier assistant audio is carried by its transcript when this process still remembers the
reply's ``audio.id``; earlier user audio is not transcribed again and appears as "(spoken message)".
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import grpc
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio_client.client import pcm16_audio

from services.common.concurrency import run_blocking
from services.http.audio_io import ChunkEncoder, decode_upload
from services.http.errors import ApiError, api_error_from_grpc, error_body, invalid_request
from services.http.gateway_calls import cancelling, grpc_metadata, started
from services.http.http_io import SSE_HEADERS, expect_json, sse
from services.http.settings import HttpSettings
from services.http.speech_options import VoiceRef, check_audio_format, resolve_voice

router = APIRouter(prefix="/v1", tags=["chat"])

INPUT_AUDIO_SAMPLE_RATE_HZ = 16000  # what the recogniser hears; any input format is resampled to it


class InputAudio(BaseModel):
    data: str
    format: str = "wav"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None
    input_audio: InputAudio | None = None


class AudioRef(BaseModel):
    id: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    audio: AudioRef | None = None


class AudioOutput(BaseModel):
    voice: str | VoiceRef = ""
    format: str = "wav"


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request. ``model`` is accepted whatever it names: the cluster has one chat stage."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] = ["text"]
    audio: AudioOutput | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = Field(None, ge=0)
    n: int = 1
    tools: list | None = None


# --- Models ------------------------------------------------------------------------------------------------------


@router.get("/models")
async def list_models(request: Request) -> dict:
    """The three things the cluster serves, under the ids of HTTP_*_MODEL_ID. Requests may name any model: each
    endpoint has one stage behind it."""
    settings: HttpSettings = request.app.state.settings
    created = int(request.app.state.started_at)
    ids = (settings.chat_model_id, settings.speech_model_id, settings.transcription_model_id)
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "stepaudio"} for model_id in ids],
    }


# --- Reply transcripts -------------------------------------------------------------------------------------------


class ReplyTranscripts:
    """The transcripts of recent audio replies by their ``audio.id``, until they expire, so a later request that
    refers to an assistant turn by ``{"audio": {"id": ...}}`` (as OpenAI's multi-turn audio does) carries its text.
    In memory: each HTTP process remembers its own replies."""

    def __init__(self, capacity: int, ttl_seconds: float) -> None:
        self._capacity = capacity
        self._ttl = ttl_seconds
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def remember(self, audio_id: str, transcript: str) -> None:
        self._entries[audio_id] = (time.time() + self._ttl, transcript)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def recall(self, audio_id: str) -> str | None:
        entry = self._entries.get(audio_id)
        if entry is None or entry[0] < time.time():
            return None
        return entry[1]


def reply_transcripts(request: Request) -> ReplyTranscripts:
    app = request.app
    if getattr(app.state, "reply_transcripts", None) is None:
        settings: HttpSettings = app.state.settings
        app.state.reply_transcripts = ReplyTranscripts(settings.remembered_replies, settings.audio_expires_seconds)
    return app.state.reply_transcripts


# --- The request turned into a gateway Chat call -------------------------------------------------------------------


@dataclass
class Turn:
    text: str = ""
    audio: audio_pb2.Audio | None = None
    system_prompt: str = ""
    voice_id: str = ""
    audio_format: str | None = None  # None: a text-only reply
    sampling: speech_pb2.SamplingParams = field(default_factory=speech_pb2.SamplingParams)


def _text_of(message: Message) -> str:
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part.text or "" for part in message.content or () if part.type == "text").strip()


def _check_parts(messages: list[Message]) -> None:
    for index, message in enumerate(messages):
        for part_index, part in enumerate(message.content if isinstance(message.content, list) else ()):
            param = f"messages.{index}.content.{part_index}"
            if part.type not in ("text", "input_audio"):
                raise invalid_request(f"{param}: content parts of type {part.type!r} are not supported", param)
            if part.type == "input_audio" and part.input_audio is None:
                raise invalid_request(f"{param}: an input_audio part needs input_audio {{data, format}}", param)


def _history_line(message: Message, transcripts: ReplyTranscripts) -> str | None:
    text = _text_of(message)
    if message.role == "assistant":
        if not text and message.audio is not None:
            text = transcripts.recall(message.audio.id) or ""
        return f"Assistant: {text}" if text else None
    if message.role == "user":
        spoken = isinstance(message.content, list) and any(p.type == "input_audio" for p in message.content)
        text = "\n".join(part for part in (text, "(spoken message)" if spoken else "") if part)
        return f"User: {text}" if text else None
    return None  # tool messages carry nothing this cluster can use


def system_prompt_for(messages: list[Message], transcripts: ReplyTranscripts, max_history_chars: int) -> str:
    """The system and developer messages, then as many of the newest earlier turns as fit in ``max_history_chars``."""
    system = "\n\n".join(_text_of(m) for m in messages if m.role in ("system", "developer") and _text_of(m))
    lines: list[str] = []
    used = 0
    for message in reversed(messages):
        line = _history_line(message, transcripts)
        if line is None:
            continue
        if used + len(line) + 1 > max_history_chars:
            break
        lines.append(line)
        used += len(line) + 1
    if not lines:
        return system
    history = "Earlier in this conversation:\n" + "\n".join(reversed(lines))
    return f"{system}\n\n{history}" if system else history


async def turn_from(body: ChatCompletionRequest, settings: HttpSettings, transcripts: ReplyTranscripts) -> Turn:
    if body.n != 1:
        raise invalid_request("n must be 1: this service returns one choice", param="n")
    if body.tools:
        raise invalid_request("tools are not supported by this service", param="tools")
    _check_parts(body.messages)
    last = body.messages[-1]
    if last.role != "user":
        raise invalid_request(f"the last message must be the user's, not {last.role!r}", param="messages")
    turn = Turn(text=_text_of(last))
    audio_parts = [p.input_audio for p in last.content if p.input_audio] if isinstance(last.content, list) else []
    if len(audio_parts) > 1:
        raise invalid_request("send at most one input_audio part in the last message", param="messages")
    if audio_parts:
        turn.audio = await _input_audio(audio_parts[0], len(body.messages) - 1, settings)
    if not turn.text and turn.audio is None:
        raise invalid_request("the last user message is empty: send text or input_audio", param="messages")
    earlier = body.messages[:-1]
    turn.system_prompt = system_prompt_for(earlier, transcripts, settings.max_history_chars)
    if "audio" in body.modalities:
        if body.audio is None:
            raise invalid_request('modalities includes "audio": set audio {voice, format}', param="audio")
        turn.audio_format = check_audio_format(body.audio.format, param="audio.format")
        turn.voice_id = resolve_voice(body.audio.voice, settings, param="audio.voice") if body.audio.voice else ""
    turn.sampling = _sampling(body)
    return turn


async def _input_audio(part: InputAudio, index: int, settings: HttpSettings) -> audio_pb2.Audio:
    param = f"messages.{index}.content.input_audio.data"
    try:
        data = await run_blocking(_base64_decode, part.data)  # megabytes of it: off the event loop
    except (binascii.Error, ValueError):
        raise invalid_request(f"{param} is not base64", param) from None
    if not data:
        raise invalid_request(f"{param} is empty", param)
    samples = await decode_upload(data, INPUT_AUDIO_SAMPLE_RATE_HZ, settings, param=param)
    return pcm16_audio(samples.tobytes(), INPUT_AUDIO_SAMPLE_RATE_HZ)


def _base64_decode(data: str) -> bytes:
    return base64.b64decode(data, validate=True)


def _sampling(body: ChatCompletionRequest) -> speech_pb2.SamplingParams:
    sampling = speech_pb2.SamplingParams()
    if body.temperature is not None:
        sampling.temperature = body.temperature
    if body.top_p is not None:
        sampling.top_p = body.top_p
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if body.seed is not None:
        sampling.seed = body.seed
    return sampling


def gateway_events(request: Request, turn: Turn, settings: HttpSettings) -> AsyncIterator[gateway_pb2.ChatResponse]:
    call = request.app.state.gateway.stub.Chat(
        gateway_pb2.ChatRequest(
            input=gateway_pb2.TurnInput(text=turn.text, audio=turn.audio),
            voice_id=turn.voice_id,
            sampling=turn.sampling,
            sample_rate_hz=settings.speech_sample_rate_hz if turn.audio_format else 0,
            text_only=turn.audio_format is None,
            system_prompt=turn.system_prompt,
        ),
        timeout=settings.chat_timeout_seconds,
        metadata=grpc_metadata(request),
    )
    return cancelling(call)


# --- The endpoint ------------------------------------------------------------------------------------------------


@router.post("/chat/completions", dependencies=[Depends(expect_json)], response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    settings: HttpSettings = request.app.state.settings
    transcripts = reply_transcripts(request)
    turn = await turn_from(body, settings, transcripts)
    try:
        events = await started(gateway_events(request, turn, settings))
    except grpc.aio.AioRpcError as err:
        error = api_error_from_grpc(err)
        if err.code() == grpc.StatusCode.NOT_FOUND and turn.voice_id:
            error.param = "audio.voice"
        raise error from None
    reply = Reply(body.model, turn, settings, transcripts)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            reply.chunks(events, include_usage), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return JSONResponse(await reply.completion(events))


class Reply:
    """One completion's identity and the gateway events turned into OpenAI's objects."""

    def __init__(self, model: str, turn: Turn, settings: HttpSettings, transcripts: ReplyTranscripts) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.audio_id = f"audio_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.expires_at = self.created + settings.audio_expires_seconds
        self.model = model
        self.turn = turn
        self.transcripts = transcripts
        self.text = ""
        self.summary: gateway_pb2.TurnSummary | None = None

    @property
    def speaks(self) -> bool:
        return self.turn.audio_format is not None

    def finish_reason(self) -> str:
        limit = self.turn.sampling.max_tokens if self.turn.sampling.HasField("max_tokens") else 0
        return "length" if self.summary and limit and self.summary.completion_tokens >= limit else "stop"

    def usage(self) -> dict:
        prompt = self.summary.prompt_tokens if self.summary else 0
        completion = self.summary.completion_tokens if self.summary else 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            }
        )

    def _audio_delta(self, **fields: object) -> dict:
        return {"audio": {"id": self.audio_id, **fields}}

    async def chunks(
        self, events: AsyncIterator[gateway_pb2.ChatResponse], include_usage: bool
    ) -> AsyncIterator[bytes]:
        """OpenAI's streamed chat: a role chunk, then text deltas (``content``, or ``audio.transcript`` when the
        reply speaks) interleaved with ``audio.data`` chunks, the audio's ``expires_at``, a finish chunk, usage when
        asked, ``[DONE]``. A gateway error after the stream started comes as an ``error`` event."""
        encoder = ChunkEncoder(self.turn.audio_format or "pcm")
        try:
            yield self._chunk({"role": "assistant", "content": None if self.speaks else ""})
            async for event in events:
                kind = event.WhichOneof("event")
                if kind == "reply_text_delta" and event.reply_text_delta:
                    self.text += event.reply_text_delta
                    if self.speaks:
                        yield self._chunk(self._audio_delta(transcript=event.reply_text_delta))
                    else:
                        yield self._chunk({"content": event.reply_text_delta})
                elif kind == "audio" and self.speaks:
                    if piece := await encoder.encode(event.audio):
                        yield self._chunk(self._audio_delta(data=base64.b64encode(piece).decode()))
                elif kind == "summary":
                    self.summary = event.summary
            if self.speaks:
                if tail := await encoder.finish():
                    yield self._chunk(self._audio_delta(data=base64.b64encode(tail).decode()))
                yield self._chunk(self._audio_delta(expires_at=self.expires_at))
                self.transcripts.remember(self.audio_id, self.text)
            yield self._chunk({}, self.finish_reason())
            if include_usage:
                yield sse({**self._envelope(), "object": "chat.completion.chunk", "choices": [], "usage": self.usage()})
            yield sse("[DONE]")
        except grpc.aio.AioRpcError as err:
            yield sse(error_body(api_error_from_grpc(err)))
        except ApiError as error:
            yield sse(error_body(error))
        finally:
            encoder.close()

    async def completion(self, events: AsyncIterator[gateway_pb2.ChatResponse]) -> dict:
        """OpenAI's chat.completion: the whole reply; with audio, ``message.audio`` {id, data, transcript,
        expires_at} and ``content`` null, as OpenAI answers."""
        encoder = ChunkEncoder(self.turn.audio_format or "pcm")
        audio = bytearray()
        try:
            async for event in events:
                kind = event.WhichOneof("event")
                if kind == "reply_text_delta":
                    self.text += event.reply_text_delta
                elif kind == "audio" and self.speaks:
                    audio += await encoder.encode(event.audio)
                elif kind == "summary":
                    self.summary = event.summary
            audio += await encoder.finish()
        finally:
            encoder.close()
        message: dict = {"role": "assistant", "content": self.text, "refusal": None}
        if self.speaks:
            message["content"] = None
            message["audio"] = {
                "id": self.audio_id,
                "data": base64.b64encode(bytes(audio)).decode(),
                "transcript": self.text,
                "expires_at": self.expires_at,
            }
            self.transcripts.remember(self.audio_id, self.text)
        return {
            **self._envelope(),
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason(), "logprobs": None}],
            "usage": self.usage(),
        }

    def _envelope(self) -> dict:
        return {"id": self.id, "created": self.created, "model": self.model}
