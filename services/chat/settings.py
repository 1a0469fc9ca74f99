"""Settings of the chat service (environment prefix ``CHAT_``, or flags of the same name)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.chat.engine import Sampling
from services.common.settings import ServiceSettings


class ChatSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHAT_")

    engine: str = Field(
        "embedded",
        description="Engine to load: 'embedded' (a Qwen2.5 GGUF on llama.cpp, CPU), 'vllm' (Step-Audio-Chat on "
        "vLLM, GPU; needs .venv-vllm, see docs/chat.md) or 'synthetic' (no model: a made-up reply at a set pace; "
        "docs/synthetic.md).",
    )
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
    # The vllm engine (docs/chat.md). Its sampling defaults are the reference's: the temperature, top_p and top_k
    # above, max_tokens and repetition_penalty below.
    models_dir: str = Field(
        "", description="vllm engine: local directory holding the checkpoint folder named by CHAT_VLLM_MODEL."
    )
    vllm_model: str = Field(
        "Step-Audio-Chat", description="vllm engine: checkpoint folder inside CHAT_MODELS_DIR (a Step1 checkpoint)."
    )
    vllm_tensor_parallel_size: int = Field(
        8, ge=1, description="vllm engine: GPUs a layer is split over (attention heads and KV heads must divide)."
    )
    vllm_pipeline_parallel_size: int = Field(
        1, ge=1, description="vllm engine: pipeline stages (layers split over nodes); GPUs used = TP × PP."
    )
    vllm_distributed_executor_backend: str = Field(
        "mp", description="vllm engine: 'mp' (one node) or 'ray' (several nodes; start the Ray cluster first)."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm engine: fraction of each GPU's memory for weights, activations and KV cache."
    )
    vllm_max_model_len: int = Field(
        0, ge=0, description="vllm engine: most tokens per sequence (prompt + reply); 0 = the checkpoint's max_seq_len."
    )
    vllm_max_num_seqs: int = Field(64, ge=1, description="vllm engine: sequences generated concurrently (one batch).")
    vllm_attention_backend: str = Field(
        "auto",
        description="vllm engine: 'auto' = TRITON_ATTN on GPU (the only backend with Step1's sqrt-ALiBi), the "
        "platform's own on CPU; or a vLLM backend name.",
    )
    vllm_dtype: str = Field("auto", description="vllm engine: weight dtype ('auto' = the checkpoint's, bfloat16).")
    vllm_enforce_eager: bool = Field(
        False, description="vllm engine: no CUDA graphs / compilation (faster start, slower decode; CPU tests)."
    )
    vllm_max_tokens: int = Field(
        2048, ge=1, le=4096, description="vllm engine: default reply length cap, in tokens (reference: 2048)."
    )
    vllm_repetition_penalty: float = Field(
        1.0, ge=0.5, le=2, description="vllm engine: default repetition penalty (reference: none, 1.0)."
    )
    # --- synthetic engine (docs/synthetic.md): a made-up reply at a set pace, for load and fault tests ----------------
    synthetic_tokens_per_second: float = Field(
        50.0, gt=0, description="synthetic: reply tokens (words) streamed per second, after the first."
    )
    synthetic_first_token_seconds: float = Field(
        0.05, ge=0, description="synthetic: delay before the first reply token (time to first token), in seconds."
    )
    synthetic_reply_words: int = Field(
        40, ge=1, le=4096, description="synthetic: words of a full reply (fewer when max_tokens or the context cut it)."
    )
    synthetic_fail_health_file: str = Field(
        "",
        description="synthetic: while this file exists the liveness check fails (the file holding 'fatal': "
        "unrecoverable, the service exits). Empty: never fails. For fault tests.",
    )

    def default_sampling(self) -> Sampling:
        """The sampling a request gets for the fields it leaves unset (embedded and synthetic engines)."""
        return Sampling(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            repetition_penalty=self.repetition_penalty,
        )
