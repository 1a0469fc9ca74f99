"""Fault injection on real processes: the four services with the synthetic engines (docs/synthetic.md), so a
fault lands at a known point of a turn. A stage is SIGKILLed or SIGSTOPped in the middle of a Chat and of a
StreamingChat; the client must get a status naming the stage, quickly; the same gateway must serve again once
the stage is back; gauges return to 0 and stored session turns survive. The gateway is SIGTERMed under 20 open
streams: every stream ends with a status. An engine whose liveness check fails turns its service NOT_SERVING,
and one that cannot recover makes the service exit non-zero."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from stepaudio.common.v1 import audio_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from tools.cluster import LocalCluster, health_status

pytestmark = pytest.mark.integration

STAGE_TIMEOUT = 4.0
RATE = 16000


def synthetic_env(run_dir: Path) -> dict[str, str]:
    """Slow enough that a fault lands mid-turn: a reply of 40 words at 20 words/s, TTS at half real time, the
    tokenizer at 1/20 of real time."""
    env = {
        "TOKENIZER_ENGINE": "synthetic",
        "CHAT_ENGINE": "synthetic",
        "TTS_ENGINE": "synthetic",
        "CHAT_SYNTHETIC_TOKENS_PER_SECOND": "20",
        "CHAT_SYNTHETIC_REPLY_WORDS": "40",
        "TTS_SYNTHETIC_REAL_TIME_FACTOR": "0.5",
        "TOKENIZER_SYNTHETIC_REAL_TIME_FACTOR": "0.05",  # a 50 s clip: Tokenize busy 2.5 s
        "TTS_REGISTRY_DIR": str(run_dir / "voices"),
        "GATEWAY_VOICE_EN": "synthetic-en",
        "GATEWAY_VOICE_ZH": "synthetic-zh",
        "GATEWAY_STAGE_TIMEOUT_SECONDS": str(STAGE_TIMEOUT),
    }
    for stage in ("TOKENIZER", "CHAT", "TTS"):
        env[f"{stage}_SYNTHETIC_FAIL_HEALTH_FILE"] = str(run_dir / f"{stage.lower()}.unhealthy")
        env[f"{stage}_HEALTH_CHECK_INTERVAL_SECONDS"] = "0.3"
        env[f"{stage}_UNHEALTHY_EXIT_SECONDS"] = "0"
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for the module: every test leaves it whole (a killed service is restarted on its ports)."""
    run_dir = tmp_path_factory.mktemp("faults")
    cluster = LocalCluster(run_dir, env=synthetic_env(run_dir))
    cluster.start(timeout=120)
    yield cluster
    cluster.stop()


@dataclass
class Outcome:
    """What a client saw of one call: events with their arrival times, then its status."""

    events: list[tuple[float, str]] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    ended_at: float = 0.0

    def first(self, kind: str) -> float:
        return next(at for at, event in self.events if event == kind)

    def has(self, kind: str) -> bool:
        return any(event == kind for _, event in self.events)


async def consume(call: AsyncIterator, outcome: Outcome, triggers: dict[str, asyncio.Event]) -> None:
    try:
        async for response in call:
            kind = response.WhichOneof("event")
            outcome.events.append((time.monotonic(), kind))
            if kind in triggers:
                triggers[kind].set()
    except grpc.aio.AioRpcError as error:
        outcome.code, outcome.details = error.code(), error.details() or ""
    outcome.ended_at = time.monotonic()


def speech(seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


async def microphone(config: gateway_pb2.StreamingChatConfig, stop: asyncio.Event) -> AsyncIterator:
    """One utterance (1 s of tone, then silence for the endpoint), then silence at real-time pace until ``stop``."""
    yield gateway_pb2.StreamingChatRequest(config=config)
    frame = 0.04
    pcm = speech(1.0)
    step = int(frame * RATE) * 2
    for start in range(0, len(pcm), step):
        yield gateway_pb2.StreamingChatRequest(audio_content=pcm[start : start + step])
        await asyncio.sleep(frame)
    while not stop.is_set():
        yield gateway_pb2.StreamingChatRequest(audio_content=silence(frame))
        await asyncio.sleep(frame)


def chat_request(session_id: str = "", text: str = "Tell me about the sea.") -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(session_id=session_id, input=gateway_pb2.TurnInput(text=text))


def audio_chat_request(seconds: float) -> gateway_pb2.ChatRequest:
    pcm = speech(seconds)
    audio = audio_pb2.Audio(
        format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=RATE, channels=1),
        content=pcm,
    )
    return gateway_pb2.ChatRequest(input=gateway_pb2.TurnInput(audio=audio))


def metric(cluster: LocalCluster, service: str, name: str, labels: dict[str, str]) -> float:
    text = urllib.request.urlopen(cluster.services[service].metrics_url, timeout=5).read().decode()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")) and all(part in line for part in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def eventually_zero(cluster: LocalCluster, service: str, method: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (value := metric(cluster, service, "stepaudio_rpc_inflight", {"method": method})) != 0:
        assert time.monotonic() < deadline, f"{service} still has {value} {method} RPCs in flight"
        await asyncio.sleep(0.1)


# The event after which each stage is killed: the stage is then surely mid-call.
MID_CHAT = {"chat": "reply_text_delta", "tts": "audio"}


@pytest.mark.parametrize("stage", ["chat", "tts"])
async def test_sigkill_of_a_stage_mid_chat(cluster: LocalCluster, stage: str) -> None:
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        session = (await gateway.CreateSession(gateway_pb2.CreateSessionRequest())).session
        stored = Outcome()
        await consume(gateway.Chat(chat_request(session.session_id, "First turn.")), stored, {})
        assert stored.code == grpc.StatusCode.OK and stored.has("summary")

        outcome, trigger = Outcome(), asyncio.Event()
        turn = asyncio.create_task(
            consume(gateway.Chat(chat_request(session.session_id)), outcome, {MID_CHAT[stage]: trigger})
        )
        await asyncio.wait_for(trigger.wait(), 10)
        cluster.services[stage].process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.wait_for(turn, 10)
        assert outcome.code == grpc.StatusCode.UNAVAILABLE, outcome
        assert f"{stage} stage" in outcome.details, outcome.details
        assert outcome.ended_at - killed_at < 1.0

        await eventually_zero(cluster, "gateway", "Chat")
        other = "tts" if stage == "chat" else "chat"
        await eventually_zero(cluster, other, "Synthesize" if other == "tts" else "Generate")

        await asyncio.to_thread(cluster.restart, stage)
        again = Outcome()
        await consume(gateway.Chat(chat_request(session.session_id, "Back again?")), again, {})
        assert again.code == grpc.StatusCode.OK and again.has("audio") and again.has("summary"), again
        history = (await gateway.GetSession(gateway_pb2.GetSessionRequest(session_id=session.session_id))).session
        texts = [entry.text for entry in history.history]
        assert texts[0] == "First turn." and "Back again?" in texts  # the stored turn survived
        assert "Tell me about the sea." not in texts  # the failed turn is not half-stored


async def test_sigkill_of_the_tokenizer_mid_chat(cluster: LocalCluster) -> None:
    """A spoken turn: the tokenizer is killed while it tokenizes a long clip."""
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        outcome = Outcome()
        turn = asyncio.create_task(consume(gateway.Chat(audio_chat_request(50.0)), outcome, {}))
        await wait_for_inflight(cluster, "tokenizer", "Tokenize")
        cluster.services["tokenizer"].process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.wait_for(turn, 10)
        assert outcome.code == grpc.StatusCode.UNAVAILABLE, outcome
        assert "tokenizer stage" in outcome.details, outcome.details
        assert outcome.ended_at - killed_at < 1.0
        await eventually_zero(cluster, "gateway", "Chat")
        await asyncio.to_thread(cluster.restart, "tokenizer")
        again = Outcome()
        await consume(gateway.Chat(audio_chat_request(1.0)), again, {})
        assert again.code == grpc.StatusCode.OK and again.has("user_transcript") and again.has("audio"), again


async def wait_for_inflight(cluster: LocalCluster, service: str, method: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while metric(cluster, service, "stepaudio_rpc_inflight", {"method": method}) < 1:
        assert time.monotonic() < deadline, f"{service} never served {method}"
        await asyncio.sleep(0.02)


# StreamingChat: the tokenizer is killed while it listens; chat and tts once the reply has begun.
MID_STREAM = {"tokenizer": "user_speech", "chat": "reply_text_delta", "tts": "audio"}


@pytest.mark.parametrize("stage", ["tokenizer", "chat", "tts"])
async def test_sigkill_of_a_stage_mid_streaming_chat(cluster: LocalCluster, stage: str) -> None:
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        stop, trigger, outcome = asyncio.Event(), asyncio.Event(), Outcome()
        config = gateway_pb2.StreamingChatConfig(
            input_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=RATE)
        )
        stream = asyncio.create_task(
            consume(gateway.StreamingChat(microphone(config, stop)), outcome, {MID_STREAM[stage]: trigger})
        )
        await asyncio.wait_for(trigger.wait(), 15)
        cluster.services[stage].process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.wait_for(stream, 10)
        stop.set()
        assert outcome.code == grpc.StatusCode.UNAVAILABLE, outcome
        assert f"{stage} stage" in outcome.details, outcome.details
        assert outcome.ended_at - killed_at < 1.0
        await eventually_zero(cluster, "gateway", "StreamingChat")

        await asyncio.to_thread(cluster.restart, stage)
        stop, trigger, again = asyncio.Event(), asyncio.Event(), Outcome()
        call = gateway.StreamingChat(microphone(config, stop))
        stream = asyncio.create_task(consume(call, again, {"summary": trigger}))
        await asyncio.wait_for(trigger.wait(), 20)
        stop.set()
        await asyncio.wait_for(stream, 10)
        assert again.code == grpc.StatusCode.OK and again.has("audio"), again


async def test_a_stopped_stage_gives_deadline_exceeded_within_the_stage_timeout(cluster: LocalCluster) -> None:
    chat = cluster.services["chat"].process
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        outcome, trigger = Outcome(), asyncio.Event()
        turn = asyncio.create_task(consume(gateway.Chat(chat_request()), outcome, {"reply_text_delta": trigger}))
        await asyncio.wait_for(trigger.wait(), 10)
        started = time.monotonic()
        chat.send_signal(signal.SIGSTOP)
        try:
            await asyncio.wait_for(turn, STAGE_TIMEOUT + 5)
        finally:
            chat.send_signal(signal.SIGCONT)
        assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED, outcome
        assert "chat stage" in outcome.details, outcome.details
        assert outcome.ended_at - started <= STAGE_TIMEOUT + 0.5
        again = Outcome()
        await consume(gateway.Chat(chat_request()), again, {})
        assert again.code == grpc.StatusCode.OK and again.has("summary"), again
        await eventually_zero(cluster, "gateway", "Chat")
        await eventually_zero(cluster, "chat", "Generate")


async def test_sigterm_of_the_gateway_under_20_streams_ends_every_stream_with_a_status(cluster: LocalCluster) -> None:
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        outcomes = [Outcome() for _ in range(20)]
        started = [asyncio.Event() for _ in outcomes]
        calls = [
            asyncio.create_task(consume(gateway.Chat(chat_request(text=f"Question {n}.")), outcome, {"audio": event}))
            for n, (outcome, event) in enumerate(zip(outcomes, started, strict=True))
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 20)
        cluster.services["gateway"].process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*calls), 30)
    exit_code = await asyncio.to_thread(cluster.services["gateway"].process.wait, 30)
    assert exit_code == 0
    await asyncio.to_thread(cluster.restart, "gateway")
    for outcome in outcomes:
        # Either the turn finished (its summary is the proof it is whole) or it ended with an error status.
        if outcome.code == grpc.StatusCode.OK:
            assert outcome.has("summary"), "a stream ended OK without its summary: silently truncated"
        else:
            assert outcome.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), outcome


def set_health_switch(cluster: LocalCluster, stage: str, content: str | None) -> None:
    path = cluster.run_dir / f"{stage}.unhealthy"
    if content is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(content)


async def wait_for_health(address: str, wanted: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (status := await asyncio.to_thread(health_status, address, 1.0)) != wanted:
        assert time.monotonic() < deadline, f"health is {status}, expected {wanted}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("stage", ["tokenizer", "chat", "tts"])
async def test_an_unhealthy_engine_turns_its_stage_not_serving_then_serving_again(
    cluster: LocalCluster, stage: str
) -> None:
    address = cluster.services[stage].address
    set_health_switch(cluster, stage, "stalled")
    await wait_for_health(address, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert metric(cluster, stage, "stepaudio_engine_healthy", {}) == 0
    set_health_switch(cluster, stage, None)
    await wait_for_health(address, health_pb2.HealthCheckResponse.SERVING)
    assert cluster.services[stage].process.poll() is None


@pytest.mark.parametrize("stage", ["chat", "tts"])
async def test_an_engine_that_cannot_recover_makes_its_stage_exit_non_zero(cluster: LocalCluster, stage: str) -> None:
    service = cluster.services[stage]
    set_health_switch(cluster, stage, "fatal")
    exit_code = await asyncio.to_thread(service.process.wait, 15)
    assert exit_code == 1
    assert "engine cannot recover" in service.log_file.read_text()
    set_health_switch(cluster, stage, None)
    await asyncio.to_thread(cluster.restart, stage)
    assert health_status(cluster.services[stage].address) == health_pb2.HealthCheckResponse.SERVING


def lag_samples(cluster: LocalCluster, service: str) -> tuple[float, float]:
    """(all samples, samples over 50 ms) of the service's event-loop lag histogram so far."""
    total = metric(cluster, service, "stepaudio_event_loop_lag_seconds_count", {})
    within = metric(cluster, service, "stepaudio_event_loop_lag_seconds_bucket", {"le": "0.05"})
    return total, total - within


async def test_event_loops_stay_responsive_under_load(cluster: LocalCluster) -> None:
    """32 concurrent turns and syntheses: each service's event loop runs its 100 ms timer at most 50 ms late, at the
    99th percentile (one late run in a hundred is left to the noisy shared machine: a GC pause, a neighbour)."""
    services = ("gateway", "tokenizer", "chat", "tts")
    before = {name: lag_samples(cluster, name) for name in services}
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        outcomes = [Outcome() for _ in range(32)]
        calls = []
        for n, outcome in enumerate(outcomes):
            if n % 4 == 0:
                call = gateway.Chat(audio_chat_request(2.0))
            elif n % 4 == 1:
                call = gateway.Synthesize(gateway_pb2.SynthesizeRequest(text="A sentence to say. " * 4))
            else:
                call = gateway.Chat(chat_request(text=f"Question {n}."))
            calls.append(consume_any(call, outcome))
        await asyncio.wait_for(asyncio.gather(*calls), 60)
    assert all(outcome.code == grpc.StatusCode.OK for outcome in outcomes), [o.details for o in outcomes]
    for name in services:
        total, late = (after - start for after, start in zip(lag_samples(cluster, name), before[name], strict=True))
        assert total >= 10, f"{name}: too few lag samples ({total}) to judge"
        assert late <= max(1, total // 100), f"{name}: {late:.0f} of {total:.0f} timer runs were over 50 ms late"


async def consume_any(call: AsyncIterator, outcome: Outcome) -> None:
    try:
        async for _ in call:
            outcome.events.append((time.monotonic(), "message"))
    except grpc.aio.AioRpcError as error:
        outcome.code, outcome.details = error.code(), error.details() or ""
