"""A typed asyncio client of the gateway's public API (``stepaudio.gateway.v1``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


@dataclass
class TurnResult:
    """Everything a chat turn returned, gathered."""

    user_transcript: str = ""
    # How the user sounded (spoken input); emotion SPEAKER_EMOTION_UNSPECIFIED when no engine could tell.
    user_emotion: speech_pb2.DetectedEmotion = field(default_factory=speech_pb2.DetectedEmotion)
    reply_text: str = ""
    pcm: bytearray = field(default_factory=bytearray)
    sample_rate_hz: int = 0
    summary: gateway_pb2.TurnSummary | None = None
    request_id: str = ""


def wav_audio(content: bytes) -> audio_pb2.Audio:
    """An ``Audio`` message for the bytes of a WAV file."""
    return audio_pb2.Audio(format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV), content=content)


def pcm16_audio(content: bytes, sample_rate_hz: int) -> audio_pb2.Audio:
    """An ``Audio`` message for raw 16-bit mono PCM."""
    return audio_pb2.Audio(
        format=audio_pb2.AudioFormat(
            encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=sample_rate_hz, channels=1
        ),
        content=content,
    )


class GatewayClient:
    """Use as ``async with GatewayClient(address) as client: ...``. Every call accepts a
    ``timeout`` in seconds; errors surface as ``grpc.aio.AioRpcError`` with the status code."""

    def __init__(self, address: str = DEFAULT_ADDRESS, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def chat_stream(
        self,
        text: str = "",
        audio: audio_pb2.Audio | None = None,
        *,
        session_id: str = "",
        voice_id: str = "",
        controls: speech_pb2.VoiceControls | None = None,
        sampling: speech_pb2.SamplingParams | None = None,
        sample_rate_hz: int = 0,
        text_only: bool = False,
        system_prompt: str = "",
        reply_mode: int = gateway_pb2.REPLY_MODE_UNSPECIFIED,
        timeout: float | None = None,
        request_id: str = "",
    ) -> grpc.aio.UnaryStreamCall:
        """The raw event stream of one turn (iterate it; ``cancel()`` it to stop the turn). ``reply_mode``
        ``gateway_pb2.REPLY_MODE_EMPATHETIC`` lets the user's detected emotion choose the reply's emotion."""
        request = gateway_pb2.ChatRequest(
            session_id=session_id,
            input=gateway_pb2.TurnInput(text=text, audio=audio),
            voice_id=voice_id,
            controls=controls,
            sampling=sampling,
            sample_rate_hz=sample_rate_hz,
            text_only=text_only,
            system_prompt=system_prompt,
            reply_mode=reply_mode,
        )
        return self.stub.Chat(request, timeout=timeout, metadata=(("x-request-id", request_id or uuid.uuid4().hex),))

    async def chat(self, text: str = "", audio: audio_pb2.Audio | None = None, **options: object) -> TurnResult:
        """Run a turn and gather its events."""
        result = TurnResult()
        call = self.chat_stream(text, audio, **options)  # type: ignore[arg-type]
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "user_transcript":
                result.user_transcript = event.user_transcript.text
                result.user_emotion = event.user_transcript.emotion
            elif kind == "reply_text_delta":
                result.reply_text += event.reply_text_delta
            elif kind == "audio":
                result.pcm += event.audio.content
                result.sample_rate_hz = event.audio.format.sample_rate_hz
            elif kind == "summary":
                result.summary = event.summary
                result.request_id = event.summary.request_id
        return result

    async def synthesize(
        self,
        text: str,
        voice_id: str = "",
        controls: speech_pb2.VoiceControls | None = None,
        sample_rate_hz: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[audio_pb2.AudioChunk]:
        request = gateway_pb2.SynthesizeRequest(
            text=text, voice_id=voice_id, controls=controls, sample_rate_hz=sample_rate_hz
        )
        async for response in self.stub.Synthesize(request, timeout=timeout):
            yield response.audio

    async def transcribe(
        self, audio: audio_pb2.Audio, language: str = "", timeout: float | None = None
    ) -> gateway_pb2.TranscribeResponse:
        return await self.stub.Transcribe(
            gateway_pb2.TranscribeRequest(audio=audio, language=language), timeout=timeout
        )

    async def list_voices(self, language: str = "", timeout: float | None = None) -> list[speech_pb2.Voice]:
        response = await self.stub.ListVoices(gateway_pb2.ListVoicesRequest(language=language), timeout=timeout)
        return list(response.voices)

    async def register_voice(
        self,
        voice_id: str,
        audio: audio_pb2.Audio,
        transcript: str,
        display_name: str = "",
        language_codes: tuple[str, ...] | list[str] = (),
        timeout: float | None = None,
    ) -> gateway_pb2.RegisterVoiceResponse:
        """Clone a voice from ``audio`` (3-30 s of one speaker, e.g. ``wav_audio(path.read_bytes())``)
        and its exact ``transcript``. Returns the new voice and its prompt token count."""
        return await self.stub.RegisterVoice(
            gateway_pb2.RegisterVoiceRequest(
                voice_id=voice_id,
                display_name=display_name,
                audio=audio,
                transcript=transcript,
                language_codes=list(language_codes),
            ),
            timeout=timeout,
        )

    async def delete_voice(self, voice_id: str, timeout: float | None = None) -> None:
        """Delete a cloned voice (built-in voices cannot be deleted)."""
        await self.stub.DeleteVoice(gateway_pb2.DeleteVoiceRequest(voice_id=voice_id), timeout=timeout)

    async def create_session(self, system_prompt: str = "", voice_id: str = "") -> gateway_pb2.Session:
        response = await self.stub.CreateSession(
            gateway_pb2.CreateSessionRequest(system_prompt=system_prompt, voice_id=voice_id)
        )
        return response.session

    async def get_session(self, session_id: str) -> gateway_pb2.Session:
        return (await self.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id))).session

    async def delete_session(self, session_id: str) -> None:
        await self.stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=session_id))
