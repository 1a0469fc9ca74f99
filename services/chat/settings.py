"""Settings of the chat service (environment prefix ``CHAT_``, or flags of the same name)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class ChatSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHAT_")

    engine: str = Field("embedded", description="Engine to load: 'embedded' (a Qwen2.5 GGUF on llama.cpp, CPU).")
    embedded_model: str = Field(
        "qwen2.5-1.5b",
        description="Packaged model for the embedded engine: 'qwen2.5-1.5b' (better, 15 tok/s on 2 cores) "
        "or 'qwen2.5-0.5b' (faster, weaker).",
    )
    model_path: str = Field("", description="A GGUF file to load instead of the packaged model (embedded engine).")
    models_cache_dir: str = Field(
        ".models", description="Directory where models carried by pip packages are assembled on first start."
    )
    context_tokens: int = Field(4096, ge=256, description="Context window (prompt + reply), in tokens.")
    threads: int = Field(2, ge=1, description="CPU threads for generation.")
    max_queue: int = Field(
        8, ge=1, description="Requests waiting for the engine beyond which RESOURCE_EXHAUSTED is returned."
    )
    max_messages: int = Field(256, ge=1, description="Most messages accepted in one request.")
    max_input_chars: int = Field(32000, ge=1, description="Most characters accepted over all messages of a request.")
    temperature: float = Field(0.7, ge=0, le=2, description="Default sampling temperature.")
    top_p: float = Field(0.9, gt=0, le=1, description="Default nucleus sampling mass.")
    top_k: int = Field(50, ge=0, le=1000, description="Default top-k (0 disables).")
    max_tokens: int = Field(512, ge=1, le=4096, description="Default reply length cap, in tokens.")
    repetition_penalty: float = Field(
        1.1, ge=0.5, le=2, description="Default repetition penalty (1.1 stops clause loops in Chinese)."
    )
