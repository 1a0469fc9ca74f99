"""Settings of the gateway (environment prefix ``GATEWAY_``, or flags of the same name)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    tokenizer_address: str = Field("127.0.0.1:50052", description="host:port of the tokenizer service.")
    chat_address: str = Field("127.0.0.1:50053", description="host:port of the chat service.")
    tts_address: str = Field("127.0.0.1:50054", description="host:port of the TTS service.")
    stage_timeout_seconds: float = Field(
        120.0, gt=0, description="Deadline of each stage call when the client set none, in seconds."
    )
    sessions_dir: str = Field(".sessions", description="Directory where sessions are stored (one JSON file each).")
    max_sessions: int = Field(
        10000, ge=1, description="Most sessions kept; CreateSession beyond it gets RESOURCE_EXHAUSTED."
    )
    max_history_turns: int = Field(
        16, ge=0, description="Most earlier turns (user + assistant pairs) sent to the chat model as context."
    )
    default_system_prompt: str = Field(
        "适配用户的语言，用简短口语化的文字回答。Answer in the user's language, briefly and conversationally.",
        description="System prompt when a request/session gives none (the Step-Audio demo's, plus English).",
    )
    max_text_chars: int = Field(4000, ge=1, description="Longest text input of a chat turn, in characters.")
    max_audio_seconds: float = Field(60.0, gt=0, description="Longest audio input of a chat turn, in seconds.")
    voice_en: str = Field("en-joe", description="Reply voice for English when none is requested.")
    voice_zh: str = Field("zh-baker", description="Reply voice for Chinese when none is requested.")
    first_clause_min_chars: int = Field(
        6, ge=1, description="A comma may end the first clause sent to TTS once it has this many characters."
    )
    clause_min_chars: int = Field(
        24, ge=1, description="A comma may end a later clause once it has this many characters."
    )
    max_active_turns: int = Field(32, ge=1, description="Concurrent Chat turns; beyond it RESOURCE_EXHAUSTED.")
