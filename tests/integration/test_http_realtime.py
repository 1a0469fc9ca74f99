"""/v1/realtime on the real HTTP process in front of the real cluster (embedded models), driven by the official
``openai`` package's realtime client: a spoken question from a Step-Audio recording (server VAD), a typed turn, a
manual turn, garbage, and a client that vanishes mid-reply."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import soundfile
import soxr
import websockets
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai import AsyncOpenAI

from tools.cluster import LocalCluster
from tools.speech_check import character_error_rate

pytestmark = pytest.mark.integration

RATE = 24000
CHUNK_SECONDS = 0.1
QUESTION_TEXT = "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？"  # the recording's transcript (manifest.json)
SHORT_REPLIES = {"temperature": 0.0, "max_response_output_tokens": 40}


def question_pcm(shared_data: Path) -> bytes:
    """The spoken question as the protocol's default input: PCM16 mono at 24 kHz."""
    samples, rate = soundfile.read(shared_data / "Tingting_prompt.wav", dtype="int16", always_2d=True)
    return soxr.resample(samples[:, 0], rate, RATE).astype("<i2").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def client(cluster: LocalCluster) -> AsyncOpenAI:
    base = cluster.http_url
    return AsyncOpenAI(
        api_key="sk-unused", base_url=f"{base}/v1", websocket_base_url=f"{base.replace('http', 'ws')}/v1"
    )


async def events_until(connection, last: str, timeout: float = 180) -> list:
    events = []
    async with asyncio.timeout(timeout):
        while True:
            events.append(await connection.recv())
            if events[-1].type == last:
                return events


def reply_audio_seconds(events: list) -> float:
    pcm = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.audio.delta")
    return len(pcm) / 2 / RATE


def metric(url: str, name: str, label: str = "") -> float:
    """The value of a gauge in a Prometheus text page (summed over the series whose labels contain ``label``)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        page = response.read().decode()
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith(name) and line[len(name)] in " {" and label in line
    ]
    return sum(values)


def assert_everything_serving(cluster: LocalCluster) -> None:
    for name, service in cluster.services.items():
        if name == "http":
            with urllib.request.urlopen(f"{cluster.http_url}/readyz", timeout=5) as response:
                assert response.status == 200
            continue
        with grpc.insecure_channel(service.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name


async def test_a_spoken_question_gets_a_spoken_answer_with_server_vad(cluster: LocalCluster, shared_data: Path) -> None:
    pcm = question_pcm(shared_data)
    piece = int(RATE * CHUNK_SECONDS) * 2
    async with client(cluster).beta.realtime.connect(model="step-audio") as connection:
        assert (await connection.recv()).type == "session.created"
        await connection.session.update(session={**SHORT_REPLIES, "turn_detection": {"type": "server_vad"}})
        assert (await connection.recv()).type == "session.updated"
        # About real time, as a microphone would, then silence so the VAD ends the turn.
        for start in range(0, len(pcm) + RATE * 2 * 2, piece):
            chunk = pcm[start : start + piece] or bytes(piece)
            await connection.input_audio_buffer.append(audio=b64(chunk))
            await asyncio.sleep(CHUNK_SECONDS)
        events = await events_until(connection, "response.done")
    kinds = [event.type for event in events]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    transcript = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    assert character_error_rate(QUESTION_TEXT, transcript.transcript) < 0.35, transcript.transcript
    done = events[-1].response
    assert done.status == "completed", done
    assert done.output[0].content[0].transcript.strip()
    assert reply_audio_seconds(events) > 0.5
    assert done.usage.output_tokens > 0


async def test_a_typed_message_and_response_create(cluster: LocalCluster) -> None:
    async with client(cluster).beta.realtime.connect(model="step-audio") as connection:
        await connection.recv()
        await connection.session.update(
            session={**SHORT_REPLIES, "voice": "en-joe", "instructions": "Answer in English."}
        )
        await connection.recv()
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is the capital of France? One sentence."}],
            }
        )
        assert (await connection.recv()).type == "conversation.item.created"
        await connection.response.create()
        events = await events_until(connection, "response.done")
    text = "".join(e.delta for e in events if e.type == "response.audio_transcript.delta")
    assert "paris" in text.lower(), text
    assert events[-1].response.status == "completed" and reply_audio_seconds(events) > 0.5


async def test_a_manual_turn_commits_the_buffer_and_asks_for_the_response(
    cluster: LocalCluster, shared_data: Path
) -> None:
    pcm = question_pcm(shared_data)
    async with client(cluster).beta.realtime.connect(model="step-audio") as connection:
        await connection.recv()
        await connection.session.update(session={**SHORT_REPLIES, "turn_detection": None})
        assert (await connection.recv()).session.turn_detection is None
        piece = RATE * 2  # one-second appends: no VAD runs, nothing is answered until asked
        for start in range(0, len(pcm), piece):
            await connection.input_audio_buffer.append(audio=b64(pcm[start : start + piece]))
        await connection.input_audio_buffer.commit()
        committed = await connection.recv()
        assert committed.type == "input_audio_buffer.committed"
        await connection.response.create()
        events = await events_until(connection, "response.done")
    transcript = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    assert transcript.item_id == committed.item_id
    assert character_error_rate(QUESTION_TEXT, transcript.transcript) < 0.35, transcript.transcript
    assert events[-1].response.status == "completed" and reply_audio_seconds(events) > 0.5
    assert "input_audio_buffer.speech_started" not in [e.type for e in events]


async def test_garbage_gets_error_events_and_the_session_still_answers(cluster: LocalCluster) -> None:
    async with client(cluster).beta.realtime.connect(model="step-audio") as connection:
        await connection.recv()
        raw = connection._connection  # the SDK's WebSocket: garbage is what its typed methods cannot send
        for garbage, code in [
            ("{not json", "invalid_json"),
            (json.dumps({"type": "input_audio_buffer.explode"}), "invalid_value"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"}), "invalid_value"),
        ]:
            await raw.send(garbage)
            event = await connection.recv()
            assert event.type == "error" and event.error.code == code, (garbage, event)
        await connection.session.update(session={**SHORT_REPLIES, "modalities": ["text"]})
        assert (await connection.recv()).type == "session.updated"
        await connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}
        )
        await connection.response.create()
        events = await events_until(connection, "response.done")
    assert events[-1].response.status == "completed"
    assert "".join(e.delta for e in events if e.type == "response.text.delta").strip()
    assert_everything_serving(cluster)


async def test_a_client_that_vanishes_mid_reply_leaves_the_services_healthy(cluster: LocalCluster) -> None:
    gateway_metrics = cluster.services["gateway"].metrics_url
    headers = {"OpenAI-Beta": "realtime=v1"}
    async with websockets.connect(
        f"{cluster.http_url.replace('http', 'ws')}/v1/realtime", additional_headers=headers
    ) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {"max_response_output_tokens": 400}}))
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(bytes(RATE // 5 * 2))}))  # a stream
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story."}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create"}))
        async with asyncio.timeout(120):
            while json.loads(await ws.recv())["type"] != "response.audio.delta":
                pass
        assert metric(gateway_metrics, "stepaudio_rpc_inflight", 'method="StreamingChat"') == 1
        assert metric(gateway_metrics, "stepaudio_rpc_inflight", 'method="Chat"') == 1
        ws.transport.abort()  # gone: no close frame
    # Every call made for it ends: the gateway's, and the stages' (the story is not written on for no one).
    in_flight = [
        (gateway_metrics, "stepaudio_rpc_inflight", 'method="StreamingChat"'),
        (gateway_metrics, "stepaudio_rpc_inflight", 'method="Chat"'),
        (gateway_metrics, "stepaudio_gateway_active_turns", ""),
        (cluster.services["chat"].metrics_url, "stepaudio_rpc_inflight", 'method="Generate"'),
        (cluster.services["tts"].metrics_url, "stepaudio_rpc_inflight", 'method="Synthesize"'),
        (cluster.services["tokenizer"].metrics_url, "stepaudio_rpc_inflight", 'method="StreamingTokenize"'),
        (f"{cluster.http_url}/metrics", "stepaudio_http_websockets_open", ""),
    ]
    deadline = time.monotonic() + 15
    while busy := [entry[1:] for entry in in_flight if metric(*entry)]:
        assert time.monotonic() < deadline, f"still running for the vanished client: {busy}"
        await asyncio.sleep(0.2)
    assert_everything_serving(cluster)
    async with client(cluster).beta.realtime.connect(model="step-audio") as connection:
        await connection.recv()
        await connection.session.update(session={**SHORT_REPLIES, "modalities": ["text"]})
        await connection.recv()
        await connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say OK."}]}
        )
        await connection.response.create()
        events = await events_until(connection, "response.done")
    assert events[-1].response.status == "completed"
