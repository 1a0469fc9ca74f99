"""Step-Audio-Chat on vLLM's AsyncLLM (in-process front end; engine core and GPU workers in child processes).

- Prompt: built as token ids by ``services.chat.prompt`` (the reference format, BOS included, audio as ids) and sent
  as ``TokensPrompt``: never through a chat template, so no BOS is lost and no system prompt is injected.
- The prompt is tokenised on one executor thread of its own (never on the event loop; one thread, so the tokenizer
  is never entered by two of our calls at once).
- Abort: closing the reply iterator (client cancel, deadline, server shutdown) aborts the vLLM request at once.
- Metrics: vLLM's ``vllm:*`` Prometheus metrics live in the default registry, which the service's /metrics serves;
  ``stepaudio_chat_vllm_requests`` adds the front end's count of unfinished requests (drops at once on abort).
- Run it from .venv-vllm (tools/setup_vllm_env.sh); never in a process that imported numba (funasr).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Gauge
from vllm import AsyncEngineArgs, SamplingParams
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from services.chat.engine import ChatEngine, EngineInfo, Message, Sampling, Usage
from services.chat.engines.vllm_engine.checkpoint import CheckpointError, Step1Plan, plan_step1
from services.chat.prompt import EOT_ID, after_special, build_prompt, reference_text
from services.chat.settings import ChatSettings
from services.common.concurrency import run_blocking
from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.vllm import runtime
from services.common.vllm.runtime import EngineOptions
from services.common.watchdog import StallWatchdog

log = logging.getLogger(__name__)

UNFINISHED = Gauge(
    "stepaudio_chat_vllm_requests",
    "Requests the vllm engine's front end holds (running or waiting); returns to 0 when every stream ended or "
    "was aborted.",
)
SELF_CHECK = [
    Message("system", "You are a helpful assistant."),
    Message("user", "hello, what is the weather today?"),
    Message("assistant", "It is sunny."),
    Message("user", "你好\n  thank you"),
]


def engine_options(settings: ChatSettings) -> EngineOptions:
    return EngineOptions(
        served_model_name=settings.vllm_model,
        dtype=settings.vllm_dtype,
        tensor_parallel_size=settings.vllm_tensor_parallel_size,
        pipeline_parallel_size=settings.vllm_pipeline_parallel_size,
        distributed_executor_backend=settings.vllm_distributed_executor_backend,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        max_num_seqs=settings.vllm_max_num_seqs,
        enforce_eager=settings.vllm_enforce_eager,
        attention_backend=settings.vllm_attention_backend,
    )


def engine_args(settings: ChatSettings, plan: Step1Plan) -> AsyncEngineArgs:
    """The AsyncLLM arguments of this engine (also used by tools/bench_chat_vllm.py)."""
    return runtime.engine_args(engine_options(settings), plan)


class VllmChatEngine(ChatEngine):
    def __init__(self, llm: AsyncLLM, plan: Step1Plan, settings: ChatSettings) -> None:
        self._llm = llm
        self._settings = settings
        self._max_model_len = plan.max_model_len
        tokenizer = llm.get_tokenizer()
        self._encode_with_specials = lambda text: tokenizer.encode(text, add_special_tokens=False)
        self._encode_reference = lambda text: tokenizer.encode(text, add_special_tokens=True)
        self._encode = after_special(self._encode_with_specials)
        self._in_flight = 0
        self._prompt_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-prompt")
        self._watchdog = StallWatchdog()
        self._info = EngineInfo(
            name="vllm",
            model=settings.vllm_model,
            supports_audio_tokens=True,
            max_context_tokens=plan.max_model_len,
            default_sampling=Sampling(
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=settings.top_k,
                max_tokens=settings.vllm_max_tokens,
                repetition_penalty=settings.vllm_repetition_penalty,
            ),
        )
        UNFINISHED.set_function(llm.output_processor.get_num_unfinished_requests)

    @classmethod
    def load(cls, settings: ChatSettings) -> VllmChatEngine:
        try:
            plan = plan_step1(settings)
        except CheckpointError as error:
            raise SystemExit(f"vllm chat engine: {error}") from None
        llm = runtime.start_engine(engine_options(settings), plan, "chat")
        engine = cls(llm, plan, settings)
        try:
            engine.check_prompt_format()
        except Exception:
            runtime.shutdown(llm)
            raise
        log.info("vllm engine ready", extra={"path": str(plan.path), "max_model_len": plan.max_model_len})
        return engine

    def check_prompt_format(self) -> None:
        """The ids built piece by piece must equal the reference's whole-string encoding with this tokenizer."""
        built = build_prompt(SELF_CHECK, self._encode)
        reference = list(self._encode_reference(reference_text(SELF_CHECK)))
        if built != reference:
            raise SystemExit(
                "vllm chat engine: this tokenizer encodes the reference prompt differently from the prompt builder "
                f"(built {built[:24]}…, reference {reference[:24]}…); see docs/chat.md"
            )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def generate(self, messages: list[Message], sampling: Sampling, usage: Usage) -> AsyncIterator[str]:
        return self._generate(messages, sampling, usage)

    async def _generate(self, messages: list[Message], sampling: Sampling, usage: Usage) -> AsyncIterator[str]:
        prompt = await run_blocking(build_prompt, messages, self._encode, executor=self._prompt_executor)
        usage.prompt_tokens = len(prompt)
        budget = self._max_model_len - len(prompt)
        if budget < 1:
            raise InvalidArgument(
                f"the conversation is {len(prompt)} tokens; the model holds {self._max_model_len} tokens "
                "(prompt + reply): shorten it or start a new session"
            )
        limit = self._settings.vllm_max_num_seqs + self._settings.max_queue
        if self._in_flight >= limit:
            raise ResourceExhausted(f"the chat engine has {self._in_flight} requests in hand; retry later")
        params = SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,  # 0 disables; the reference's HF generate applied its default top_k=50
            max_tokens=min(sampling.max_tokens, budget),
            repetition_penalty=sampling.repetition_penalty,
            seed=sampling.seed,
            stop_token_ids=[EOT_ID],
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )
        stream = self._stream(prompt, params, usage)
        try:
            async for text in stream:
                yield text
        finally:
            await stream.aclose()  # aborts the vLLM request now, not when the generator is collected

    async def _stream(self, prompt: list[int], params: SamplingParams, usage: Usage) -> AsyncIterator[str]:
        self._in_flight += 1
        try:
            async for output in runtime.stream_request(
                self._llm, prompt, params, f"chat-{uuid.uuid4().hex}", self._watchdog
            ):
                completion = output.outputs[0]
                usage.completion_tokens += len(completion.token_ids)
                if output.finished:
                    usage.finish_reason = "length" if completion.finish_reason == "length" else "stop"
                if completion.text:
                    yield completion.text
        finally:
            self._in_flight -= 1

    async def check_health(self) -> None:
        runtime.check_alive(self._llm, self._watchdog, self._settings.engine_stall_seconds, "chat")

    async def close(self) -> None:
        runtime.shutdown(self._llm)
        self._prompt_executor.shutdown(wait=False, cancel_futures=True)
