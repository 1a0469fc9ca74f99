"""Gateway bounds on in-process stages with fake engines: a slow client slows the stages instead of growing the
gateway's buffers, and a StreamingChat lives past the per-stage timeout up to its own limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import REGISTRY
from stepaudio.gateway.v1 import gateway_pb2

from services.common.controls import Controls
from services.tts.engine import PcmChunk, VoiceInfo
from tests.fakes import FakeTtsEngine
from tests.unit.test_gateway import Cluster
from tests.unit.test_stage_servicers import expect_code
from tests.unit.test_streaming_chat import FORMAT, SILENCE, SPEECH, Microphone, drain, read_until

CHUNKS = 2000  # per Synthesize call, 0.25 s (8 kB) each: 16 MB, more than gRPC's flow-control windows hold


class CountingTtsEngine(FakeTtsEngine):
    """A fake that speaks every clause as CHUNKS chunks, produced only as fast as they are taken."""

    def __init__(self) -> None:
        super().__init__()
        self.produced = 0

    async def synthesize(self, text: str, voice: VoiceInfo, controls: Controls) -> AsyncIterator[PcmChunk]:
        rate = voice.native_sample_rate_hz
        for _ in range(CHUNKS):
            self.produced += 1
            yield PcmChunk(np.full(rate // 4, 0.1, dtype=np.float32), rate)


def gauge() -> float:
    return REGISTRY.get_sample_value("stepaudio_gateway_buffered_events")


async def settled(value, quiet: float = 0.5, within: float = 10.0):
    """``value()`` once it has stopped changing for ``quiet`` seconds."""
    deadline = time.monotonic() + within
    last, since = value(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "never settled"
        await asyncio.sleep(0.05)
        if (now := value()) != last:
            last, since = now, time.monotonic()
    return last


class Buffered:
    """The buffered-events gauge counted from this test's start (0 when run alone), and its highest value since."""

    def __init__(self) -> None:
        self._before = gauge()
        self.highest = 0.0
        self._watch = asyncio.create_task(self._follow())

    def __call__(self) -> float:
        return gauge() - self._before

    async def _follow(self) -> None:
        while True:
            self.highest = max(self.highest, self())
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        self._watch.cancel()


async def test_a_client_that_stops_reading_stops_the_tts_stage_not_the_gateway_memory(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, max_buffered_events=4)
    cluster.tts = engine = CountingTtsEngine()
    await cluster.start()
    buffered = Buffered()
    try:
        call = cluster.client.chat_stream("Say hello")
        read = 0
        async for event in call:
            read += event.HasField("audio")
            if read == 3:
                break  # the client stops reading
        stalled = await settled(lambda: engine.produced)
        # The stage waits for the reader: what is in flight is the gateway's bound plus gRPC's flow-control
        # windows (a few MB per hop), not the reply (3 × 16 MB).
        assert stalled < CHUNKS
        assert buffered.highest <= 4 and buffered() == 4

        async for event in call:  # reading again resumes the stage
            read += event.HasField("audio")
            if read == stalled + 50:
                break
        assert await settled(lambda: engine.produced) > stalled
        call.cancel()
        assert await settled(buffered, quiet=0.2) == 0
    finally:
        buffered.stop()
        await cluster.stop()


async def test_a_streaming_chat_slow_reader_is_bounded_too_and_the_gauge_returns_to_zero(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, max_buffered_events=4)
    cluster.tts = engine = CountingTtsEngine()
    await cluster.start()
    buffered = Buffered()
    try:
        mic = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT))
        call = cluster.client.stub.StreamingChat(mic.requests())
        mic.say(SPEECH, SILENCE)
        await read_until(call, "audio")
        produced = await settled(lambda: engine.produced)
        assert produced < CHUNKS
        assert buffered.highest <= 2 * 4  # the reply pipeline's queue and the conversation's
        call.cancel()
        assert await settled(buffered, quiet=0.2) == 0
    finally:
        buffered.stop()
        await cluster.stop()


async def test_a_streaming_chat_outlives_the_stage_timeout(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, stage_timeout_seconds=0.5)
    await cluster.start()
    try:
        mic = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT))
        call = cluster.client.stub.StreamingChat(mic.requests())  # no client deadline
        mic.say(SPEECH, SILENCE)
        await read_until(call, "summary")
        await asyncio.sleep(1.0)  # twice the stage timeout, with the tokenizer stream open
        mic.say(SPEECH, SILENCE)
        await read_until(call, "summary")
        mic.hang_up()
        assert await drain(call) == []
        assert await call.code() == grpc.StatusCode.OK
    finally:
        await cluster.stop()


async def test_a_streaming_chat_without_a_deadline_ends_at_its_limit(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, max_stream_seconds=0.6)
    await cluster.start()
    try:
        mic = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT))
        started = time.monotonic()
        await expect_code(
            cluster.client.stub.StreamingChat(mic.requests()),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "the conversation reached its limit of 0.6 s",
        )
        assert time.monotonic() - started < 2
    finally:
        await cluster.stop()
