"""Settings of the gateway (environment prefix ``GATEWAY_``, or flags of the same name)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.gateway.emotion import check_context_template


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    tokenizer_address: str = Field("127.0.0.1:50052", description="host:port of the tokenizer service.")
    chat_address: str = Field("127.0.0.1:50053", description="host:port of the chat service.")
    tts_address: str = Field("127.0.0.1:50054", description="host:port of the TTS service.")
    stage_timeout_seconds: float = Field(
        120.0, gt=0, description="Deadline of each stage call when the client set none, in seconds."
    )
    stage_connect_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Longest wait for a stage that cannot be reached (down or restarting) before the call gets "
        "UNAVAILABLE naming it, in seconds. A stage lost while a call is being served fails that call at once.",
    )
    stage_reconnect_backoff_seconds: float = Field(
        1.0,
        gt=0,
        description="Longest pause between attempts to reconnect to a stage that went away, in seconds: a restarted "
        "stage is used again within about this long.",
    )
    stage_keepalive_seconds: float = Field(
        20.0,
        ge=0,
        description="HTTP/2 keepalive ping interval on a stage connection that carries calls but no traffic, in "
        "seconds, so a stage that vanished without closing it (host down, network cut, stopped process) is noticed. "
        "The stages of this project accept pings every 10 s or more; other gRPC servers by default only every "
        "5 min (they close connections that ping more often). 0: no pings.",
    )
    stage_keepalive_timeout_seconds: float = Field(
        20.0, gt=0, description="A stage connection whose keepalive ping is not answered this fast is closed."
    )
    max_stream_seconds: float = Field(
        3600.0,
        gt=0,
        description="Longest StreamingChat when the client sets no deadline, in seconds (the deadline of its "
        "tokenizer stream); its per-reply chat and tts calls keep stage_timeout_seconds.",
    )
    max_buffered_events: int = Field(
        32,
        ge=1,
        description="Reply events (text deltas, audio chunks) one call holds for a client that reads slower than "
        "the stages produce; when full, the gateway stops reading the stage streams and gRPC flow control slows "
        "the stages down. A StreamingChat holds at most twice this.",
    )
    sessions_dir: str = Field(".sessions", description="Directory where sessions are stored (one JSON file each).")
    max_sessions: int = Field(
        10000, ge=1, description="Most sessions kept; CreateSession beyond it gets RESOURCE_EXHAUSTED."
    )
    max_history_turns: int = Field(
        16, ge=0, description="Most earlier turns (user + assistant pairs) sent to the chat model as context."
    )
    max_history_chars: int = Field(
        8000, ge=0, description="Most characters of earlier turns sent to the chat model as context (newest kept)."
    )
    chars_per_token: float = Field(
        1.0,
        gt=0,
        description="Characters per chat-model token assumed when fitting the history into the chat stage's "
        "context window (its GetEngineInfo max_context_tokens): 1.0 is safe for Chinese, generous for English.",
    )
    reply_reserve_tokens: int = Field(
        512,
        ge=0,
        description="Tokens of the chat context kept free for the reply when fitting the history, unless the "
        "request's sampling.max_tokens says otherwise (the chat stage's default max_tokens).",
    )
    max_stored_turns: int = Field(
        200, ge=2, description="Most turns a session keeps (user and assistant each count one); oldest dropped."
    )
    session_ttl_seconds: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="A session not used (no turn, no GetSession) for this long is deleted, in seconds; 0: never.",
    )
    session_sweep_seconds: float = Field(
        600.0, gt=0, description="How often expired sessions are looked for and deleted, in seconds."
    )
    default_system_prompt: str = Field(
        "适配用户的语言，用简短口语化的文字回答。Answer in the user's language, briefly and conversationally.",
        description="System prompt when a request/session gives none (the Step-Audio demo's, plus English).",
    )
    max_text_chars: int = Field(4000, ge=1, description="Longest text input of a chat turn, in characters.")
    max_audio_seconds: float = Field(60.0, gt=0, description="Longest audio input of a chat turn, in seconds.")
    voice_en: str = Field("en-joe", description="Reply voice for English when none is requested.")
    voice_zh: str = Field("zh-baker", description="Reply voice for Chinese when none is requested.")
    voice_ja: str = Field(
        "ja-mei", description="Reply voice for Japanese when none is requested (empty: the English voice)."
    )
    first_clause_min_chars: int = Field(
        6, ge=1, description="A comma may end the first clause sent to TTS once it has this many characters."
    )
    clause_min_chars: int = Field(
        24, ge=1, description="A comma may end a later clause once it has this many characters."
    )
    max_active_turns: int = Field(32, ge=1, description="Concurrent Chat turns; beyond it RESOURCE_EXHAUSTED.")
    emotion_min_confidence: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A detected user emotion whose engine gives a confidence below this is still reported in the "
        "transcript, but not told to the chat model nor used by the empathetic reply mode. Readings without a "
        "confidence (the chat model's own) are used as they are.",
    )
    emotion_context: str = Field(
        "The user's voice sounds {emotion}; let your reply suit it.",
        description="Line added to the chat prompt's system message when the user's emotion was detected "
        "({emotion}: the English label, e.g. sad). Empty: the emotion is not passed to the chat model.",
    )
    chat_emotion_reading: bool = Field(
        True,
        description="When the chat model hears audio tokens (step-audio profile) and the tokenizer detected no "
        "emotion, ask the chat model to name the speaker's emotion (one short greedy Generate call before the reply; "
        "its time counts in the turn's transcribe_seconds). False: the emotion is not detected there.",
    )
    chat_emotion_prompt: str = Field(
        "听这段语音，判断说话人的情绪。只回答一个英文单词：neutral、happy、sad、angry、fearful、surprised、disgusted；"
        "听不出来就回答 unknown。",
        min_length=1,
        description="System prompt of the chat model's emotion reading; the user message is the audio. An answer "
        "that is not exactly one label word (English or Chinese) counts as not detected.",
    )

    @field_validator("emotion_context")
    @classmethod
    def _emotion_context_fields(cls, value: str) -> str:
        return check_context_template(value)
