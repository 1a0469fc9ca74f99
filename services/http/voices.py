"""Voices: ``GET/POST /v1/voices``, ``DELETE /v1/voices/{id}`` (this service's shape, every field of the cluster's
voices), and OpenAI's ``POST /v1/audio/voices`` / ``DELETE /v1/audio/voices/{id}`` (``client.audio.voices``) over
the same gateway calls (ListVoices, RegisterVoice, DeleteVoice)."""

from __future__ import annotations

import re
import time
import uuid

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio_client.client import pcm16_audio

from services.http.audio_io import decode_upload
from services.http.errors import invalid_request
from services.http.gateway_calls import grpc_metadata
from services.http.http_io import form_text, read_file_field, read_form
from services.http.settings import HttpSettings

router = APIRouter(tags=["voices"])


def voice_object(voice: speech_pb2.Voice) -> dict:
    return {
        "id": voice.voice_id,
        "object": "voice",
        "name": voice.display_name or voice.voice_id,
        "languages": list(voice.language_codes),
        "sample_rate_hz": voice.native_sample_rate_hz,
        "engine": voice.engine,
        "supported_controls": list(voice.supported_controls),
        "cloned": voice.cloned,
    }


@router.get("/v1/voices")
async def list_voices(request: Request, language: str = "") -> dict:
    """The TTS stage's voices (``language``: a BCP-47 prefix to filter by), and the aliases this service accepts."""
    settings: HttpSettings = request.app.state.settings
    response = await request.app.state.gateway.stub.ListVoices(
        gateway_pb2.ListVoicesRequest(language=language),
        timeout=settings.voices_timeout_seconds,
        metadata=grpc_metadata(request),
    )
    return {
        "object": "list",
        "data": [voice_object(voice) for voice in response.voices],
        "aliases": settings.voice_aliases,
    }


@router.post("/v1/voices")
async def create_voice(request: Request) -> dict:
    """Clones a voice from a multipart form: ``file`` (3-30 s of one speaker, any common format), ``transcript`` (what
    it says; empty: transcribed here), ``id`` (empty: generated), ``name``, ``language`` (comma-separated tags)."""
    form = await read_form(request)
    voice, _ = await register(request, form, audio_field="file", voice_id=form_text(form, "id"))
    return voice_object(voice)


@router.post("/v1/audio/voices")
async def create_openai_voice(request: Request) -> dict:
    """OpenAI's voice creation (``audio_sample``, ``name``; ``consent`` is accepted and not checked: this service
    keeps no consent records). The transcript the cluster needs is transcribed here unless ``transcript`` is sent."""
    form = await read_form(request)
    voice, created_at = await register(request, form, audio_field="audio_sample", voice_id="")
    return {
        "id": voice.voice_id,
        "object": "audio.voice",
        "name": voice.display_name,
        "type": "audio_sample",
        "created_at": created_at,
    }


@router.delete("/v1/voices/{voice_id}")
async def delete_voice(voice_id: str, request: Request) -> dict:
    await _delete(request, voice_id)
    return {"id": voice_id, "object": "voice.deleted", "deleted": True}


@router.delete("/v1/audio/voices/{voice_id}")
async def delete_openai_voice(voice_id: str, request: Request) -> dict:
    await _delete(request, voice_id)
    return {"id": voice_id, "object": "audio.voice.deleted", "deleted": True}


async def _delete(request: Request, voice_id: str) -> None:
    settings: HttpSettings = request.app.state.settings
    await request.app.state.gateway.stub.DeleteVoice(
        gateway_pb2.DeleteVoiceRequest(voice_id=voice_id),
        timeout=settings.voices_timeout_seconds,
        metadata=grpc_metadata(request),
    )


_LANGUAGE_SEPARATOR = re.compile(r"[\s,]+")


async def register(request: Request, form: FormData, audio_field: str, voice_id: str) -> tuple[speech_pb2.Voice, int]:
    """RegisterVoice with the form's recording (decoded to PCM16 at HTTP_CLONE_SAMPLE_RATE_HZ); returns the new
    voice and its creation time (Unix seconds)."""
    settings: HttpSettings = request.app.state.settings
    data = await read_file_field(form, audio_field)
    languages = [tag for tag in _LANGUAGE_SEPARATOR.split(form_text(form, "language")) if tag]
    rate = settings.clone_sample_rate_hz
    samples = await decode_upload(data, rate, settings, param=audio_field)
    audio = pcm16_audio(samples.tobytes(), rate)
    transcript = form_text(form, "transcript") or await _transcribe(request, audio, languages, audio_field)
    voice_id = voice_id or f"voice_{uuid.uuid4().hex[:16]}"
    response = await request.app.state.gateway.stub.RegisterVoice(
        gateway_pb2.RegisterVoiceRequest(
            voice_id=voice_id,
            display_name=form_text(form, "name"),
            audio=audio,
            transcript=transcript,
            language_codes=languages,
        ),
        timeout=settings.voices_timeout_seconds,
        metadata=grpc_metadata(request),
    )
    return response.voice, int(time.time())


async def _transcribe(request: Request, audio: audio_pb2.Audio, languages: list[str], audio_field: str) -> str:
    """What the recording says, for a clone request that sent no transcript."""
    settings: HttpSettings = request.app.state.settings
    response = await request.app.state.gateway.stub.Transcribe(
        gateway_pb2.TranscribeRequest(audio=audio, language=languages[0].split("-")[0] if languages else ""),
        timeout=settings.transcribe_timeout_seconds,
        metadata=grpc_metadata(request),
    )
    if not response.transcript.text.strip():
        raise invalid_request(
            f"{audio_field}: no speech was recognised in the recording; send its transcript in `transcript`",
            param=audio_field,
        )
    return response.transcript.text.strip()
