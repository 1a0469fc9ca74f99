"""Stage failures as the gateway's clients see them (in-process stages with fake engines, stopped and started again
on the same port): a stage that goes away mid-call is UNAVAILABLE at once, naming it; one that is down when a call
begins is waited for, within a bound; one that comes back is used again without restarting the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from stepaudio.gateway.v1 import gateway_pb2

from services.common.controls import Controls
from services.tts.engine import PcmChunk, VoiceInfo
from tests.fakes import FakeTtsEngine
from tests.unit.test_gateway import Cluster
from tests.unit.test_stage_servicers import assert_serving, expect_code
from tests.unit.test_streaming_chat import FORMAT, SPEECH, Microphone, read_until


class HangingTtsEngine(FakeTtsEngine):
    """A fake that sends one chunk, then hangs (a stage busy mid-call)."""

    async def synthesize(self, text: str, voice: VoiceInfo, controls: Controls) -> AsyncIterator[PcmChunk]:
        yield PcmChunk(np.zeros(1600, dtype=np.float32), voice.native_sample_rate_hz)
        await asyncio.Event().wait()


async def read_until_audio(call) -> None:
    async with asyncio.timeout(10):
        async for event in call:
            if event.HasField("audio"):
                return


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def test_a_stage_killed_during_its_call_fails_the_turn_at_once_naming_it(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.tts = HangingTtsEngine()
    await cluster.start()
    try:
        call = cluster.client.chat_stream("hi")
        await read_until_audio(call)
        address = cluster.servers["tts"][1]
        stopped = time.monotonic()
        await cluster.stop_stage("tts")
        details = await expect_code(call, grpc.StatusCode.UNAVAILABLE, f"the tts stage ({address}) is unavailable: ")
        assert details.endswith("; retry")
        assert time.monotonic() - stopped < 1.0
        await assert_serving(cluster.client._channel)
    finally:
        await cluster.stop()


async def test_a_stage_lost_between_two_of_its_calls_fails_the_turn_at_once(tmp_path: Path) -> None:
    """No tts call is in flight when tts goes away (the chat stage is still writing); the next clause's call
    fails at once, it does not wait for a stage that was lost during this very turn."""
    cluster = Cluster(tmp_path)  # the default 5 s connect wait
    cluster.chat.hold = 2  # "Hello there." is spoken, then the chat engine waits
    await cluster.start()
    try:
        call = cluster.client.chat_stream("hi")
        await read_until_audio(call)
        for _ in range(500):  # until the first clause's Synthesize call has ended
            if not REGISTRY.get_sample_value("stepaudio_rpc_inflight", {"method": "Synthesize"}):
                break
            await asyncio.sleep(0.01)
        await cluster.stop_stage("tts")
        stopped = time.monotonic()
        cluster.chat.release.set()
        await expect_code(call, grpc.StatusCode.UNAVAILABLE, "its connection was lost during this call")
        assert time.monotonic() - stopped < 1.0
    finally:
        await cluster.stop()


async def test_a_stage_that_comes_back_on_its_port_is_waited_for_then_used(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    await cluster.start()
    try:
        assert (await cluster.client.chat("before")).reply_text == cluster.chat.reply
        port = port_of(cluster.servers["tts"][1])
        await cluster.stop_stage("tts")
        turn = asyncio.create_task(cluster.client.chat("while it restarts"))  # starts with tts down: waits
        await asyncio.sleep(0.5)
        assert not turn.done()
        await cluster.start_stage("tts", port)
        async with asyncio.timeout(5):
            result = await turn
        assert result.reply_text == cluster.chat.reply and result.pcm
        assert len((await cluster.client.chat("after")).pcm) == len(result.pcm)
    finally:
        await cluster.stop()


async def test_the_wait_for_a_stage_that_stays_down_is_bounded(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, stage_connect_timeout_seconds=0.5)
    await cluster.start()
    try:
        address = cluster.servers["tts"][1]
        await cluster.stop_stage("tts")
        started = time.monotonic()
        await expect_code(
            cluster.client.chat_stream("hi"),
            grpc.StatusCode.UNAVAILABLE,
            f"the tts stage ({address}) is unavailable: not reachable for 0.5 s; retry",
        )
        assert 0.5 <= time.monotonic() - started < 2
        await expect_code(cluster.client.synthesize("hello"), grpc.StatusCode.UNAVAILABLE, "the tts stage")
        await expect_code(cluster.client.list_voices(), grpc.StatusCode.UNAVAILABLE, "the tts stage")
    finally:
        await cluster.stop()


async def test_a_stage_that_runs_out_of_time_is_named(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, stage_timeout_seconds=0.5)
    cluster.chat.hold = 2  # never released
    await cluster.start()
    try:
        address = cluster.servers["chat"][1]
        await expect_code(
            cluster.client.chat_stream("hi"),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the chat stage ({address}) did not answer within 0.5 s",
        )
    finally:
        await cluster.stop()


async def test_a_stage_fault_keeps_its_code_and_names_the_stage(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    await cluster.start()
    try:

        def broken(*args: object) -> None:
            raise RuntimeError("engine bug")

        cluster.chat.generate = broken  # type: ignore[method-assign]
        address = cluster.servers["chat"][1]
        await expect_code(
            cluster.client.chat_stream("hi"),
            grpc.StatusCode.INTERNAL,
            f"the chat stage ({address}) failed: internal error: RuntimeError",
        )
        # the caller's own mistakes keep the stage's code and words
        await expect_code(cluster.client.synthesize("  "), grpc.StatusCode.INVALID_ARGUMENT, "text is empty")
    finally:
        await cluster.stop()


async def test_the_tokenizer_lost_mid_streaming_chat_is_named(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    await cluster.start()
    try:
        mic = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT))
        call = cluster.client.stub.StreamingChat(mic.requests())
        mic.say(SPEECH)
        await read_until(call, "user_speech")
        stopped = time.monotonic()
        await cluster.stop_stage("tokenizer")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async with asyncio.timeout(5):
                while await call.read() is not grpc.aio.EOF:
                    pass
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details().startswith("the tokenizer stage (")
        assert time.monotonic() - stopped < 1.0
    finally:
        await cluster.stop()
