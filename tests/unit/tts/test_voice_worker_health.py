"""Voice-worker deadlines, hang recovery and the embedded TTS engine's liveness check, on real worker processes.

A hung worker is a real one stopped with SIGSTOP; a worker that cannot start is the real worker script
pointed at a model that does not exist.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from services.common.errors import EngineUnhealthy, Unavailable
from services.tts.engine import Controls
from services.tts.engines import embedded
from services.tts.engines.embedded import EmbeddedTtsEngine, WorkerLimits
from services.tts.settings import TtsSettings
from tests.unit.tts.test_embedded_engine import EN_SENTENCE, MIN_RMS, collect, rms, seconds, worker_pid

REPLY_TIMEOUT = 2.0
LONG_TEXT = " ".join(f"This is sentence number {n} of a long answer." for n in range(1, 13))


@pytest.fixture
async def engine() -> AsyncIterator[EmbeddedTtsEngine]:
    loaded = EmbeddedTtsEngine.load(TtsSettings(zh_worker_python="", worker_reply_timeout_seconds=REPLY_TIMEOUT))
    try:
        yield loaded
    finally:
        await loaded.close()


def english_worker(engine: EmbeddedTtsEngine) -> embedded._VoiceWorker:
    return engine._voices["en-joe"].worker


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def restarted(engine: EmbeddedTtsEngine, old_pid: int) -> bool:
    worker = english_worker(engine)
    try:
        return worker_pid("piper") != old_pid and worker._alive() and worker.sample_rate > 0
    except AssertionError:  # no worker process at this instant
        return False


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_hung_worker_fails_the_request_within_its_deadline_and_a_new_one_serves(engine) -> None:
    stream = engine.synthesize(LONG_TEXT, engine.voices()[0], Controls())
    await anext(stream)
    pid = worker_pid("piper")
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    with pytest.raises(Unavailable, match=f"en-joe voice worker did not answer within {REPLY_TIMEOUT:g} s") as raised:
        async for _ in stream:
            pass
    assert time.monotonic() - stopped_at < REPLY_TIMEOUT + 2.5
    assert raised.value.code.name == "UNAVAILABLE"
    assert process_gone(pid)  # killed, not left stopped
    chunks = await collect(engine, "en-joe", EN_SENTENCE)
    assert 0.8 < seconds(chunks) < 4.0 and rms(chunks) > MIN_RMS
    assert worker_pid("piper") != pid
    await engine.check_health()


async def test_check_health_reports_a_worker_stuck_past_its_deadline(engine) -> None:
    worker = english_worker(engine)
    os.kill(worker_pid("piper"), signal.SIGSTOP)
    stream = engine.synthesize(EN_SENTENCE, engine.voices()[0], Controls())
    pending = asyncio.ensure_future(anext(stream))
    await eventually(lambda: worker._waiting is not None, "the request waits for the worker")
    await engine.check_health()  # waiting, but within the deadline: healthy
    now = time.monotonic()
    assert worker.problem(now) is None
    hung = worker.problem(now + REPLY_TIMEOUT + 10)  # as a check would see it if the kill did not work
    assert hung is not None and hung.recoverable and "en-joe voice worker has not answered" in hung.message
    with pytest.raises(Unavailable, match="did not answer"):
        await pending
    await stream.aclose()


async def test_check_health_starts_a_dead_worker_again_without_a_request(engine) -> None:
    pid = worker_pid("piper")
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: not english_worker(engine)._alive(), "the worker is dead")
    await engine.check_health()  # a dead worker that can be restarted is not a failure
    await eventually(lambda: restarted(engine, pid), "the worker was started again")
    await engine.check_health()
    assert rms(await collect(engine, "en-joe", EN_SENTENCE)) > MIN_RMS


async def test_a_worker_that_keeps_failing_to_start_is_unrecoverable() -> None:
    command = [
        sys.executable, "-I", str(Path(embedded.__file__).with_name("voice_worker.py")), "--backend", "piper",
        "--model", "/nonexistent/voice.onnx", "--config", "/nonexistent/voice.onnx.json",
    ]  # fmt: skip
    worker = embedded._VoiceWorker("en-broken", command, WorkerLimits(start_seconds=20))
    voice = embedded._Voice("en-broken", "Broken", ("en-US",), False, worker)
    engine = EmbeddedTtsEngine([voice])
    failures: list[EngineUnhealthy] = []
    deadline = time.monotonic() + 60
    try:
        while not failures or failures[-1].recoverable:
            assert time.monotonic() < deadline, f"still recoverable after {len(failures)} failed checks"
            try:
                await engine.check_health()
            except EngineUnhealthy as error:
                if not failures or error.message != failures[-1].message:
                    failures.append(error)
            await asyncio.sleep(0.1)
        with pytest.raises(Unavailable, match="en-broken voice worker"):
            [chunk async for chunk in engine.synthesize("Hello.", voice.info(), Controls())]
    finally:
        await engine.close()
    assert failures[0].recoverable and "en-broken voice worker failed to start" in failures[0].message
    assert not failures[-1].recoverable and "failed to start 3 times in a row" in failures[-1].message
