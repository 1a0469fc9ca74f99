"""Settings of the tokenizer service (environment prefix ``TOKENIZER_``, or flags of the same name)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class TokenizerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENIZER_")

    engine: str = Field(
        "embedded",
        description="Engine to load: 'embedded' (whisper-base ASR + Silero VAD), 'step-audio' (audio tokens) or "
        "'synthetic' (no model: energy VAD, made-up transcripts and tokens; docs/synthetic.md).",
    )
    models_cache_dir: str = Field(
        ".models", description="Directory where models carried by pip packages are assembled on first start."
    )
    max_audio_seconds: float = Field(120.0, gt=0, description="Longest audio accepted by Tokenize, in seconds.")
    max_stream_seconds: float = Field(
        3600.0,
        gt=0,
        description="Longest audio of one StreamingTokenize stream, in seconds (engines keep bounded state per "
        "stream; a live conversation streams for its whole length).",
    )
    asr_threads: int = Field(2, ge=1, description="CPU threads of the embedded ASR model.")
    asr_beam_size: int = Field(5, ge=1, le=10, description="Beam width of the embedded ASR decoder.")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Speech probability above which a frame is speech.")
    vad_min_silence_ms: int = Field(
        600, ge=100, description="Silence that ends an utterance (an endpoint), in milliseconds."
    )
    vad_padding_ms: int = Field(200, ge=0, description="Audio kept before/after speech for ASR, in milliseconds.")
    max_utterance_seconds: float = Field(
        60.0,
        ge=1,
        le=600,
        description="embedded: longest utterance, in seconds. Speech that goes on this long without a pause gets a "
        "forced endpoint: speech ended and the transcript of what was said so far; the speech that follows starts "
        "a new utterance. Bounds the audio a stream holds and each ASR call.",
    )
    models_dir: str = Field(
        "models", description="step-audio: directory that holds Step-Audio-Tokenizer/ (checked before loading)."
    )
    onnx_provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="step-audio: onnxruntime provider of the vq06 model; auto uses CUDA when present."
    )
    trim_silence: bool = Field(
        False, description="step-audio: trim leading/trailing silence (tokens then come only at the end)."
    )
    vq06_window_seconds: float = Field(
        30.0,
        ge=0.48,
        le=30.0,
        description="step-audio: vq06 runs on fixed windows of this length from the stream start (rounded to 40 ms).",
    )
    max_streams: int = Field(16, ge=1, description="step-audio: streams open at once; more get RESOURCE_EXHAUSTED.")
    # --- synthetic engine (docs/synthetic.md): deterministic output at configurable rates, for load and fault tests
    synthetic_rms_threshold: float = Field(
        0.02, gt=0, lt=1, description="synthetic: RMS of a 20 ms frame (full scale 1.0) above which it is speech."
    )
    synthetic_endpoint_seconds: float = Field(
        0.5, ge=0.02, description="synthetic: silence that ends an utterance (an endpoint), in seconds."
    )
    synthetic_real_time_factor: float = Field(
        0.0,
        ge=0,
        description="synthetic: seconds of work per second of audio fed (0.05: a 50 s clip keeps the engine busy "
        "2.5 s), so a fault test can land mid-request. 0: as fast as the machine goes.",
    )
    synthetic_fail_health_file: str = Field(
        "",
        description="synthetic: while this file exists the liveness check fails (the file holding 'fatal': "
        "unrecoverable, the service exits). Empty: never fails. For fault tests.",
    )
