"""``POST /v1/audio/speech`` and ``POST /v1/audio/transcriptions``, OpenAI-compatible, over the gateway's Synthesize
and Transcribe."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Literal

import grpc
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio_client.client import pcm16_audio

from services.common import codecs
from services.http.audio_io import decode_upload, encoded
from services.http.errors import ApiError, api_error_from_grpc, error_body, invalid_request
from services.http.gateway_calls import cancelling, grpc_metadata, started
from services.http.http_io import (
    SSE_HEADERS,
    expect_json,
    form_flag,
    form_text,
    read_file_field,
    read_form,
    sse,
)
from services.http.settings import HttpSettings
from services.http.speech_options import (
    VoiceRef,
    check_audio_format,
    check_speed,
    controls_from_instructions,
    resolve_voice,
)

router = APIRouter(prefix="/v1/audio", tags=["audio"])


class SpeechRequest(BaseModel):
    """OpenAI's speech request. ``model`` is accepted whatever it names: the cluster has one TTS stage."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str
    voice: str | VoiceRef
    instructions: str = ""
    response_format: str = "mp3"
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] = "audio"


@router.post("/speech", dependencies=[Depends(expect_json)], response_class=Response)
async def create_speech(body: SpeechRequest, request: Request) -> Response:
    """Synthesises ``input``, streaming the encoded audio as the gateway produces it."""
    settings: HttpSettings = request.app.state.settings
    text = check_input(body.input, settings)
    fmt = check_audio_format(body.response_format)
    speed = check_speed(body.speed, settings)
    requested = resolve_voice(body.voice, settings)
    voice = await choose_voice(request, requested, text)
    controls = controls_from_instructions(body.instructions, voice.supported_controls if voice else None)
    if speed != 1.0:
        controls.speed = speed
    chunks = synthesized(request, text, voice.voice_id if voice else requested, controls, settings)
    try:
        chunks = await started(chunks)
    except grpc.aio.AioRpcError as err:
        raise _with_param(err, "voice" if err.code() == grpc.StatusCode.NOT_FOUND else None) from None
    if body.stream_format == "sse":
        return StreamingResponse(speech_events(chunks, fmt), media_type="text/event-stream", headers=SSE_HEADERS)
    return StreamingResponse(encoded(chunks, fmt), media_type=codecs.content_type(fmt))


def _with_param(err: grpc.aio.AioRpcError, param: str | None) -> ApiError:
    error = api_error_from_grpc(err)
    error.param = param
    return error


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


async def choose_voice(request: Request, voice_id: str, text: str) -> speech_pb2.Voice | None:
    """The voice to speak with: ``voice_id``'s entry in the TTS stage's list; for "" (an alias meaning the
    cluster's choice) the first voice of the text's language (Chinese when it holds Chinese characters, else
    English). None when there is no such voice: the gateway then decides (its own default, or 404 for a name)."""
    settings: HttpSettings = request.app.state.settings
    response = await request.app.state.gateway.stub.ListVoices(
        gateway_pb2.ListVoicesRequest(), timeout=settings.voices_timeout_seconds, metadata=grpc_metadata(request)
    )
    if voice_id:
        return next((voice for voice in response.voices if voice.voice_id == voice_id), None)
    language = "zh" if _CJK.search(text) else "en"
    return next(
        (voice for voice in response.voices if any(code.lower().startswith(language) for code in voice.language_codes)),
        None,
    )


def check_input(text: str, settings: HttpSettings) -> str:
    text = text.strip()
    if not text:
        raise invalid_request("input is empty: send the text to speak", param="input")
    if len(text) > settings.max_input_chars:
        raise invalid_request(
            f"input is {len(text)} characters; the limit is {settings.max_input_chars}", param="input"
        )
    return text


_SENTENCE_END = re.compile(r"(?<=[.!?;。！？；\n])\s*")


def split_text(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of at most ``max_chars``, cut after sentence ends where possible (the TTS stage takes
    at most its own limit per call)."""
    pieces: list[str] = []
    current = ""
    for sentence in filter(None, _SENTENCE_END.split(text)):
        if current and len(current) + 1 + len(sentence) > max_chars:
            pieces.append(current)
            current = ""
        while len(sentence) > max_chars:  # one sentence longer than a piece: cut at a space, else anywhere
            cut = sentence.rfind(" ", 0, max_chars) + 1 or max_chars
            pieces.append(sentence[:cut].rstrip())
            sentence = sentence[cut:]
        current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return pieces


async def synthesized(
    request: Request, text: str, voice_id: str, controls: speech_pb2.VoiceControls, settings: HttpSettings
) -> AsyncIterator[audio_pb2.AudioChunk]:
    """The audio chunks of ``text``, one gateway Synthesize call per piece, one after the other."""
    stub = request.app.state.gateway.stub
    for piece in split_text(text, settings.max_synthesize_chars):
        call = stub.Synthesize(
            gateway_pb2.SynthesizeRequest(
                text=piece, voice_id=voice_id, controls=controls, sample_rate_hz=settings.speech_sample_rate_hz
            ),
            timeout=settings.synthesize_timeout_seconds,
            metadata=grpc_metadata(request),
        )
        async for response in cancelling(call):
            yield response.audio


async def speech_events(chunks: AsyncIterator[audio_pb2.AudioChunk], fmt: str) -> AsyncIterator[bytes]:
    """OpenAI's streamed speech (``stream_format: "sse"``): ``speech.audio.delta`` events, ``speech.audio.done``."""
    try:
        async for piece in encoded(chunks, fmt):
            yield sse({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()})
    except grpc.aio.AioRpcError as err:  # after the response started: the error becomes an event
        yield sse(error_body(api_error_from_grpc(err)))
        return
    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}  # the TTS stage reports no token counts
    yield sse({"type": "speech.audio.done", "usage": usage})


# --- Transcriptions ----------------------------------------------------------------------------------------------

TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


@router.post("/transcriptions", response_model=None)
async def create_transcription(request: Request) -> Response:
    """Transcribes an uploaded file of any common audio format (multipart ``file``)."""
    settings: HttpSettings = request.app.state.settings
    form = await read_form(request)
    data = await read_file_field(form, "file")
    response_format = form_text(form, "response_format", "json") or "json"
    if response_format not in TRANSCRIPTION_FORMATS:
        raise invalid_request(
            f"response_format {response_format[:40]!r} is not supported: use one of {', '.join(TRANSCRIPTION_FORMATS)}",
            param="response_format",
        )
    stream = form_flag(form, "stream")
    language = form_text(form, "language")
    rate = settings.transcribe_sample_rate_hz
    samples = await decode_upload(data, rate, settings)
    response = await request.app.state.gateway.stub.Transcribe(
        gateway_pb2.TranscribeRequest(audio=pcm16_audio(samples.tobytes(), rate), language=language),
        timeout=settings.transcribe_timeout_seconds,
        metadata=grpc_metadata(request),
    )
    transcript = response.transcript
    duration = round(len(samples) / rate, 3)
    if stream:
        return StreamingResponse(transcript_events(transcript), media_type="text/event-stream", headers=SSE_HEADERS)
    return transcription_response(transcript, duration, response_format)


async def transcript_events(transcript: speech_pb2.Transcript) -> AsyncIterator[bytes]:
    """OpenAI's streamed transcription. The gateway transcribes an upload whole, so the text comes as one
    ``transcript.text.delta`` (when it is not empty) and then ``transcript.text.done``."""
    if transcript.text:
        yield sse({"type": "transcript.text.delta", "delta": transcript.text})
    yield sse({"type": "transcript.text.done", "text": transcript.text})


def transcription_response(transcript: speech_pb2.Transcript, duration: float, response_format: str) -> Response:
    text = transcript.text
    usage = {"type": "duration", "seconds": duration}
    if response_format == "json":
        return JSONResponse({"text": text, "usage": usage})
    if response_format == "text":
        return PlainTextResponse(text)
    start, end = transcript.start_seconds, transcript.end_seconds or duration
    if response_format == "srt":
        return PlainTextResponse(f"1\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n")
    if response_format == "vtt":
        return PlainTextResponse(
            f"WEBVTT\n\n{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n", media_type="text/vtt"
        )
    # The recogniser reports one segment and no token ids or probabilities: those fields hold neutral values.
    segment = {
        "id": 0, "seek": 0, "start": start, "end": end, "text": text, "tokens": [], "temperature": 0.0,
        "avg_logprob": 0.0, "compression_ratio": 1.0, "no_speech_prob": 0.0,
    }  # fmt: skip
    return JSONResponse(
        {
            "task": "transcribe",
            "language": transcript.language,
            "duration": duration,
            "text": text,
            "segments": [segment] if text else [],
            "usage": usage,
        }
    )


def _timestamp(seconds: float, decimal_mark: str) -> str:
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{decimal_mark}{rest % 1000:03d}"
