"""vLLM's AsyncLLM for a Step1 checkpoint: engine arguments, start, one streamed request, shutdown.

Imports vLLM: load it only in .venv-vllm (tools/setup_vllm_env.sh), never in a process that imported numba (funasr).
The engine core and the GPU workers run in child processes; ``AsyncLLM`` is the in-process front end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from vllm import AsyncEngineArgs, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.outputs import RequestOutput
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM

from services.common.errors import EngineUnhealthy
from services.common.vllm.checkpoint import Step1Plan
from services.common.watchdog import StallWatchdog

log = logging.getLogger(__name__)

CPU_TEST_DOUBLE_ENV = "STEPAUDIO_CPU_STEP1_PLAIN_ALIBI"


@dataclass(frozen=True)
class EngineOptions:
    """Typed engine parameters (each service maps its own settings onto these)."""

    served_model_name: str
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "mp"
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    enforce_eager: bool = False
    attention_backend: str = "auto"
    # Per-engine logits processors, "package.module:Class" (vLLM v1 has none per request; requests enable them
    # through SamplingParams.extra_args).
    logits_processors: tuple[str, ...] = ()


def attention_backend(setting: str) -> str | None:
    """TRITON_ATTN on GPU: the only vLLM backend that implements Step1's sqrt-ALiBi (the CUDA default would be
    FLASH_ATTN or FLASHINFER, which refuse it). On CPU the platform's own backend (CPU_ATTN)."""
    if setting != "auto":
        return setting
    return None if current_platform.is_cpu() else "TRITON_ATTN"


def engine_args(options: EngineOptions, plan: Step1Plan) -> AsyncEngineArgs:
    o = options
    return AsyncEngineArgs(
        model=str(plan.path),
        tokenizer=str(plan.path),
        served_model_name=o.served_model_name,
        trust_remote_code=True,  # Step1's config class lives in the checkpoint (configuration_step1.py)
        dtype=o.dtype,
        tensor_parallel_size=o.tensor_parallel_size,
        pipeline_parallel_size=o.pipeline_parallel_size,
        # One process is enough for one GPU; with several, 'mp' on one node or 'ray' across nodes.
        distributed_executor_backend=o.distributed_executor_backend if plan.world_size > 1 else None,
        gpu_memory_utilization=o.gpu_memory_utilization,
        max_model_len=plan.max_model_len,
        max_num_seqs=o.max_num_seqs,
        enforce_eager=o.enforce_eager,
        hf_overrides=plan.hf_overrides or None,
        attention_backend=attention_backend(o.attention_backend),
        logits_processors=list(o.logits_processors) or None,
        disable_log_stats=False,  # keeps the vllm:* Prometheus metrics
        enable_log_requests=False,
    )


def start_engine(options: EngineOptions, plan: Step1Plan, label: str) -> AsyncLLM:
    """AsyncLLM for ``plan`` (blocks until the engine core and workers are up). ``label`` names the engine in logs."""
    for note in plan.notes:
        log.info("vllm checkpoint check", extra={"engine": label, "detail": note})
    if os.environ.get(CPU_TEST_DOUBLE_ENV) == "1":
        log.warning(f"{CPU_TEST_DOUBLE_ENV}=1: on CPU Step1 runs with PLAIN ALiBi (a test double)")
    return AsyncLLM.from_engine_args(engine_args(options, plan))


async def stream_request(
    llm: AsyncLLM, prompt_ids: list[int], params: SamplingParams, request_id: str, watchdog: StallWatchdog
) -> AsyncIterator[RequestOutput]:
    """The outputs of one request. Closing this iterator before the request finished (client cancel, deadline,
    shutdown) aborts it at once, which frees its KV cache. Each output is progress for ``watchdog``."""
    outputs = llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id)
    finished = False
    try:
        with watchdog.working():
            async for output in outputs:
                watchdog.progress()
                if output.finished:
                    finished = True
                yield output
    finally:
        if not finished:
            await outputs.aclose()
            await llm.abort(request_id)
            log.info("vllm request aborted", extra={"request": request_id})


def check_alive(llm: AsyncLLM, watchdog: StallWatchdog, stall_limit: float, label: str) -> None:
    """Liveness of an AsyncLLM: its engine core process alive (vLLM's own monitor notices a dead one) and, while
    requests are in hand, producing output. Either failure needs a new process: the engine core is not restarted
    in place."""
    if llm.errored:
        raise EngineUnhealthy(f"the {label} vLLM engine core has died; the service must restart", recoverable=False)
    stalled = watchdog.stalled_seconds()
    if stalled > stall_limit:
        raise EngineUnhealthy(
            f"the {label} vLLM engine has had requests in hand with no output for {stalled:.0f} s (limit "
            f"{stall_limit:g} s): hung",
            recoverable=False,
        )


def shutdown(llm: AsyncLLM) -> None:
    llm.shutdown()
