"""Settings of the HTTP service (environment prefix ``HTTP_``, or flags of the same name)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024

# OpenAI's built-in voice names, so clients that send them unchanged (Pipecat, LiveKit Agents) get speech.
# "" is the cluster's default choice: the TTS default voice for speech, a voice matching the reply's language for chat.
OPENAI_VOICE_NAMES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip


class HttpSettings(BaseSettings):
    """Network, gateway, limit and naming settings of the HTTP service."""

    model_config = SettingsConfigDict(env_prefix="HTTP_", extra="forbid", cli_kebab_case=True, cli_implicit_flags=True)

    host: str = Field("127.0.0.1", description="Address the HTTP server binds (0.0.0.0 in containers).")
    port: int = Field(
        8080, ge=0, le=65535, description="HTTP port (API, WebSocket, web app, /metrics); 0 picks a free port."
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    port_file: str = Field(
        "",
        description="If set, write 'port port' to this file once serving (tests, supervisors; the same shape as "
        "the gRPC services' 'grpc_port metrics_port').",
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM: seconds in-flight requests and WebSockets get to finish before they are closed.",
    )
    gateway_address: str = Field("127.0.0.1:50051", description="host:port of the gateway's gRPC API.")
    max_grpc_message_bytes: int = Field(
        16 * MiB, ge=MiB, description="Largest gRPC message sent to or accepted from the gateway, in bytes."
    )
    ready_timeout_seconds: float = Field(
        2.0, gt=0, description="/readyz: longest wait for the gateway's grpc.health.v1 answer, in seconds."
    )
    synthesize_timeout_seconds: float = Field(
        120.0, gt=0, description="Deadline of a gateway Synthesize call (POST /v1/audio/speech), in seconds."
    )
    transcribe_timeout_seconds: float = Field(
        120.0, gt=0, description="Deadline of a gateway Transcribe call (POST /v1/audio/transcriptions), in seconds."
    )
    chat_timeout_seconds: float = Field(
        300.0, gt=0, description="Deadline of a gateway Chat call (POST /v1/chat/completions), in seconds."
    )
    voices_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="Deadline of the gateway's voice calls (list, register, delete), in seconds.",
    )
    max_upload_bytes: int = Field(
        25 * MiB,
        ge=1024,
        description="Largest request body, in bytes: uploaded audio files, and JSON bodies carrying base64 audio. "
        "A larger body gets 413 before it is read in full.",
    )
    max_input_chars: int = Field(
        4096, ge=1, description="Longest `input` of POST /v1/audio/speech, in characters (OpenAI's limit)."
    )
    max_synthesize_chars: int = Field(
        2000,
        ge=1,
        description="Longest text sent in one gateway Synthesize call (the TTS stage's TTS_MAX_TEXT_CHARS): longer "
        "speech input is cut after sentence ends and synthesised piece by piece into one stream.",
    )
    speech_sample_rate_hz: int = Field(
        24000,
        ge=0,
        le=48000,
        description="Sample rate of synthesised speech and chat audio before encoding (OpenAI's pcm is 24 kHz; the "
        "gateway resamples); 0: each voice's native rate. Opus is always 48 kHz, mulaw/alaw 8 kHz.",
    )
    max_decoded_audio_seconds: float = Field(
        600.0,
        gt=0,
        description="Longest audio an upload may decode to, in seconds (checked while decoding, so a small file "
        "cannot expand to hours); the gateway has its own, lower limit per call (GATEWAY_MAX_AUDIO_SECONDS).",
    )
    transcribe_sample_rate_hz: int = Field(
        16000, ge=8000, le=48000, description="Uploads are decoded to mono PCM16 at this rate before Transcribe."
    )
    clone_sample_rate_hz: int = Field(
        24000,
        ge=16000,
        le=48000,
        description="Voice-cloning recordings are decoded to mono PCM16 at this rate before RegisterVoice.",
    )
    min_speed: float = Field(
        0.5, gt=0, description="Smallest `speed` of POST /v1/audio/speech (the TTS stage's range; OpenAI allows 0.25)."
    )
    max_speed: float = Field(
        2.0, gt=0, description="Largest `speed` of POST /v1/audio/speech (the TTS stage's range; OpenAI allows 4.0)."
    )
    voice_aliases: dict[str, str] = Field(
        default_factory=lambda: dict.fromkeys(OPENAI_VOICE_NAMES, ""),
        description="Voice names accepted in place of a cluster voice id (JSON object name -> voice id); an "
        "empty voice id means the cluster's default choice. Default: OpenAI's built-in voice names -> \"\".",
    )
    speech_model_id: str = Field("step-audio-tts", description="Model id /v1/models lists for speech synthesis.")
    transcription_model_id: str = Field("step-audio-asr", description="Model id /v1/models lists for transcription.")
    chat_model_id: str = Field("step-audio-chat", description="Model id /v1/models lists for chat completions.")
    max_history_chars: int = Field(
        3000,
        ge=0,
        description="Chat completions: most characters of a request's earlier messages carried to the gateway (in "
        "the system prompt, newest kept; the gateway takes at most GATEWAY_MAX_TEXT_CHARS there, system message "
        "included).",
    )
    remembered_replies: int = Field(
        1000,
        ge=0,
        description="Chat completions: transcripts of this many recent audio replies are kept in memory, so a later "
        "request can refer to an assistant turn by its audio.id alone.",
    )
    audio_expires_seconds: int = Field(
        3600,
        ge=0,
        description="`expires_at` of chat-completion audio is now plus this, in seconds: how long its transcript "
        "is remembered for later requests that refer to it by audio.id (the audio itself is not kept).",
    )
    realtime_max_message_bytes: int = Field(
        15 * MiB,
        ge=64 * 1024,
        description="/v1/realtime: largest client event, in bytes (OpenAI's limit); a larger one gets an `error` "
        "event and is dropped. Keep it under the server's WebSocket frame limit (uvicorn's 16 MiB).",
    )
    realtime_max_buffer_seconds: float = Field(
        60.0,
        gt=0,
        description="/v1/realtime: most input audio held for a manual turn (appended or added as items, not yet "
        "answered), in seconds; the gateway takes at most GATEWAY_MAX_AUDIO_SECONDS a turn.",
    )
    realtime_idle_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="/v1/realtime: a connection with no client event for this long, and no reply streaming, is "
        "closed (after an `error` event with code idle_timeout), in seconds.",
    )
    realtime_max_session_seconds: float = Field(
        1800.0,
        gt=0,
        description="/v1/realtime: longest connection, in seconds (OpenAI's is 30 min); then an `error` event with "
        "code session_expired and the socket closes.",
    )
