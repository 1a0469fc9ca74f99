"""max_connection_age on real processes: the four services with the synthetic engines, every server ageing its
client connections out after 1 s. The gateway's connections to the stages are replaced (new TCP connections, seen
from the operating system), turns keep succeeding across the renewals, and a StreamingChat whose tokenizer stream
outlives several ages goes on to its end: GOAWAY moves new calls to a new connection without cutting calls in
flight (no grace limit by default)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from stepaudio.common.v1 import audio_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from tools.cluster import LocalCluster

pytestmark = pytest.mark.integration

AGE = 1.0
RATE = 16000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    run_dir: Path = tmp_path_factory.mktemp("connection-age")
    env = {
        "TOKENIZER_ENGINE": "synthetic",
        "CHAT_ENGINE": "synthetic",
        "TTS_ENGINE": "synthetic",
        "TTS_REGISTRY_DIR": str(run_dir / "voices"),
        "GATEWAY_VOICE_EN": "synthetic-en",
        "GATEWAY_VOICE_ZH": "synthetic-zh",
    }
    for service in ("GATEWAY", "TOKENIZER", "CHAT", "TTS"):
        env[f"{service}_MAX_CONNECTION_AGE_SECONDS"] = str(AGE)
    cluster = LocalCluster(run_dir, env=env)
    cluster.start(timeout=120)
    yield cluster
    cluster.stop()


def connections_to(cluster: LocalCluster, stage: str) -> set[int]:
    """Local ports of the gateway's established TCP connections to ``stage``'s gRPC port."""
    port = cluster.services[stage].grpc_port
    gateway = psutil.Process(cluster.services["gateway"].process.pid)
    return {c.laddr.port for c in gateway.net_connections("tcp") if c.raddr and c.raddr.port == port}


def text_turn(text: str) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(input=gateway_pb2.TurnInput(text=text))


async def kinds(call: AsyncIterator) -> list[str]:
    return [response.WhichOneof("event") async for response in call]


async def test_stage_connections_are_renewed_and_turns_keep_working(cluster: LocalCluster) -> None:
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        assert "audio" in await kinds(gateway.Chat(text_turn("Hello there.")))
        first = {stage: connections_to(cluster, stage) for stage in ("chat", "tts")}
        assert all(first.values()), first
        for turn in range(3):
            await asyncio.sleep(AGE * 1.3)  # past the age (±10 %): every connection has had its GOAWAY
            assert "audio" in await kinds(gateway.Chat(text_turn(f"Turn {turn}."))), turn
        for stage in ("chat", "tts"):
            now = connections_to(cluster, stage)
            assert now and not now & first[stage], f"{stage}: still on the connections {first[stage]} ({now})"


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


async def microphone(replies: asyncio.Queue[None], utterances: int) -> AsyncIterator:
    """``utterances`` times: 1 s of tone, then silence at real-time pace until the reply to it has ended, then
    another 1.5 s of silence (longer than the connections' age). Real-time pace throughout."""
    config = gateway_pb2.StreamingChatConfig(
        input_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=RATE)
    )
    yield gateway_pb2.StreamingChatRequest(config=config)
    frame = 0.04
    step = int(frame * RATE) * 2
    for _ in range(utterances):
        pcm = tone(1.0)
        for start in range(0, len(pcm), step):
            yield gateway_pb2.StreamingChatRequest(audio_content=pcm[start : start + step])
            await asyncio.sleep(frame)
        while replies.empty():
            yield gateway_pb2.StreamingChatRequest(audio_content=bytes(step))
            await asyncio.sleep(frame)
        replies.get_nowait()
        for _ in range(int(1.5 / frame)):
            yield gateway_pb2.StreamingChatRequest(audio_content=bytes(step))
            await asyncio.sleep(frame)


async def test_a_streaming_chat_outlives_many_connection_ages(cluster: LocalCluster) -> None:
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        replies: asyncio.Queue[None] = asyncio.Queue()
        summaries = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(60):
            async for response in gateway.StreamingChat(microphone(replies, utterances=3)):
                if response.WhichOneof("event") == "summary":
                    summaries += 1
                    replies.put_nowait(None)
        assert summaries == 3
        assert loop.time() - started > 4 * AGE  # the client's and the tokenizer's streams spanned several ages
