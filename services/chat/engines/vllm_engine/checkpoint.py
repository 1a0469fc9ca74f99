"""Start-up checks of the chat checkpoint against the vllm engine's settings (pure Python, no vLLM import).

The checks themselves live in ``services.common.vllm.checkpoint`` (shared with the tts ``step-audio`` engine); this
module maps ``ChatSettings`` onto them, so messages name the ``CHAT_…`` settings.
"""

from __future__ import annotations

from typing import Any

from services.chat.settings import ChatSettings
from services.common.vllm import checkpoint as common
from services.common.vllm.checkpoint import (
    STEP1_ARCHITECTURE,
    CheckpointError,
    Step1Options,
    Step1Plan,
    TensorLocation,
    find_tensors,
    read_safetensors_header,
    tensors_equal,
    tie_overrides,
    weight_files,
)

__all__ = [
    "STEP1_ARCHITECTURE",
    "CheckpointError",
    "Step1Plan",
    "TensorLocation",
    "check_parallel",
    "find_tensors",
    "plan_step1",
    "read_safetensors_header",
    "step1_options",
    "tensors_equal",
    "tie_overrides",
    "weight_files",
]

PREFIX = "CHAT_VLLM_"


def check_parallel(config: dict[str, Any], tensor_parallel: int, pipeline_parallel: int) -> None:
    common.check_parallel(config, tensor_parallel, pipeline_parallel, PREFIX)


def step1_options(settings: ChatSettings) -> Step1Options:
    return Step1Options(
        models_dir=settings.models_dir,
        model=settings.vllm_model,
        tensor_parallel_size=settings.vllm_tensor_parallel_size,
        pipeline_parallel_size=settings.vllm_pipeline_parallel_size,
        distributed_executor_backend=settings.vllm_distributed_executor_backend,
        max_model_len=settings.vllm_max_model_len,
        prefix=PREFIX,
        models_dir_setting="CHAT_MODELS_DIR",
        model_setting="CHAT_VLLM_MODEL",
    )


def plan_step1(settings: ChatSettings) -> Step1Plan:
    """Validate settings and checkpoint; CheckpointError names what to fix."""
    return common.plan_step1(step1_options(settings))
