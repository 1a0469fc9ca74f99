"""/v1/realtime against the real HTTP app (uvicorn, in-process) and the real gateway and stage servicers with fake
engines, driven by the official ``openai`` package's realtime clients (beta and GA) and, for garbage, a raw
WebSocket: event order and shapes, VAD and manual turns, typed turns, formats, cancellation, barge-in, limits."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn
import websockets
from openai import AsyncOpenAI

from services.common.controls import EMOTIONS, STYLES
from services.gateway import metrics as gateway_metrics
from services.http import g711, realtime
from services.http import metrics as http_metrics
from services.http.app import create_app
from services.http.realtime_events import (
    AUDIO_FORMATS,
    RealtimeError,
    Response,
    SessionConfig,
    apply_session_update,
)
from services.http.settings import HttpSettings
from services.http.speech_options import CONTROL_VALUES
from services.tts.engine import VoiceInfo
from tests.fakes import FakeTtsEngine
from tests.unit.test_gateway import Cluster

RATE = 24000
SPEECH = (0.3 * np.sin(np.arange(RATE // 5) / 5) * 32767).astype("<i2").tobytes()  # 0.2 s of "speech"
SILENCE = bytes(RATE // 5 * 2)  # 0.2 s of zeros
SPEED_RANGE = (0.5, 2.0)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` (state of another component, with no event to wait on) until it holds."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@asynccontextmanager
async def http_service(gateway_address: str, **settings: object) -> AsyncIterator[str]:
    """The HTTP app on uvicorn on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(HttpSettings(gateway_address=gateway_address, **settings))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until(lambda: server.started)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path)
    await cluster.start()
    yield cluster
    await cluster.stop()


@pytest.fixture
async def http(cluster: Cluster) -> AsyncIterator[str]:
    async with http_service(cluster.address) as address:
        yield address


def openai_client(address: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="sk-test", base_url=f"http://{address}/v1", websocket_base_url=f"ws://{address}/v1")


async def events_until(connection, last: str, timeout: float = 10) -> list:
    """Server events up to and including the first of type ``last``."""
    events = []
    async with asyncio.timeout(timeout):
        while True:
            event = await connection.recv()
            events.append(event)
            if event.type == last:
                return events


async def speak(connection) -> None:
    """An utterance the fake tokenizer answers: speech, then all-zero chunks (it ends an utterance at one; the
    first after speech still carries the tail of the gateway's 24 -> 16 kHz resampler, so it takes two)."""
    for chunk in (SPEECH, SILENCE, SILENCE):
        await connection.input_audio_buffer.append(audio=b64(chunk))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audio_of(events: list, kind: str = "response.audio.delta") -> bytes:
    return b"".join(base64.b64decode(e.delta) for e in events if e.type == kind)


async def test_a_spoken_turn_with_server_vad(http: str, cluster: Cluster) -> None:
    async with openai_client(http).beta.realtime.connect(model="step-audio") as connection:
        created = await connection.recv()
        assert created.type == "session.created"
        assert created.session.turn_detection.type == "server_vad" and created.session.input_audio_format == "pcm16"
        await speak(connection)
        events = await events_until(connection, "response.done")
    kinds = [e.type for e in events]
    assert kinds[:5] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.completed",
    ]
    user_item = events[0].item_id
    assert events[2].item_id == events[3].item.id == events[4].item_id == user_item
    assert events[4].transcript.startswith("heard ")
    assert kinds[5:9] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
    ]
    assert "response.audio_transcript.delta" in kinds and kinds[-4:] == [
        "response.audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    transcript = "".join(e.delta for e in events if e.type == "response.audio_transcript.delta")
    assert transcript == cluster.chat.reply
    done = events[-1].response
    assert done.status == "completed" and done.output[0].content[0].transcript == transcript
    assert done.usage.output_tokens == len(cluster.chat.reply.split()) and done.usage.input_tokens > 0
    # The fake voice speaks 0.01 s a character; the client gets it at 24 kHz.
    seconds = len(audio_of(events)) / 2 / RATE
    assert seconds == pytest.approx(0.01 * len(transcript), abs=0.05)


async def test_typed_and_manual_spoken_turns_share_one_history(http: str, cluster: Cluster) -> None:
    async with openai_client(http).beta.realtime.connect(model="step-audio") as connection:
        await connection.recv()
        await connection.session.update(session={"turn_detection": None, "instructions": "Be brief."})
        updated = await connection.recv()
        assert updated.type == "session.updated" and updated.session.turn_detection is None
        await connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]}
        )
        created = await connection.recv()
        assert created.type == "conversation.item.created" and created.item.content[0].text == "My name is Ada."
        await connection.response.create()
        first = await events_until(connection, "response.done")
        assert first[-1].response.status == "completed"

        await connection.input_audio_buffer.append(audio=b64(SPEECH))
        await connection.input_audio_buffer.commit()
        committed, item = await connection.recv(), await connection.recv()
        assert committed.type == "input_audio_buffer.committed" and item.item.content[0].type == "input_audio"
        assert committed.previous_item_id == first[-1].response.output[0].id
        await connection.response.create()
        second = await events_until(connection, "response.done")
    transcripts = [e for e in second if e.type == "conversation.item.input_audio_transcription.completed"]
    assert transcripts[0].item_id == committed.item_id and transcripts[0].transcript.startswith("heard")
    assert second[-1].response.status == "completed" and len(audio_of(second)) > 0
    messages, _ = cluster.chat.requests[-1]
    texts = [message.text for message in messages]
    assert texts[0] == "Be brief." and "My name is Ada." in texts and texts[-1].startswith("heard")


async def test_garbage_gets_error_events_and_the_socket_keeps_working(http: str) -> None:
    async with websockets.connect(f"ws://{http}/v1/realtime", additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        bad = [
            ("not json at all", "invalid_json", None),
            (json.dumps([1, 2]), None, "type"),
            (json.dumps({"type": "no.such.event", "event_id": "evt_1"}), "invalid_value", "type"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "***not base64***"}), "invalid_value", "audio"),
            (
                json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x01\x02\x03")}),
                "invalid_value",
                "audio",
            ),
            (json.dumps({"type": "input_audio_buffer.append", "audio": 7}), None, "audio"),
            (json.dumps({"type": "session.update", "session": {"input_audio_format": "mp3"}}), "invalid_value", None),
            (json.dumps({"type": "session.update", "session": {"voice": "nobody"}}), "invalid_value", "session.voice"),
            (json.dumps({"type": "response.cancel"}), "response_cancel_not_active", None),
            (json.dumps({"type": "response.create"}), "no_input", None),
            (json.dumps({"type": "conversation.item.create", "item": {"role": "assistant"}}), "unsupported_item", None),
        ]
        for message, code, param in bad:
            await ws.send(message)
            event = json.loads(await ws.recv())
            assert event["type"] == "error", message
            assert event["error"]["type"] == "invalid_request_error" and event["error"]["message"]
            if code:
                assert event["error"]["code"] == code, (message, event)
            if param:
                assert event["error"]["param"] == param, (message, event)
        await ws.send(b"\x00binary")
        assert json.loads(await ws.recv())["type"] == "error"
        # The client's event id comes back in the error.
        await ws.send(json.dumps({"type": "nope", "event_id": "evt_mine"}))
        assert json.loads(await ws.recv())["error"]["event_id"] == "evt_mine"
        # Still a working session.
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create", "response": {"modalities": ["text"]}}))
        kinds = []
        async with asyncio.timeout(10):
            while not kinds or kinds[-1] != "response.done":
                kinds.append(json.loads(await ws.recv())["type"])
        assert "response.text.delta" in kinds and "response.audio.delta" not in kinds


async def test_a_too_large_event_gets_an_error(cluster: Cluster) -> None:
    async with http_service(cluster.address, realtime_max_message_bytes=64 * 1024) as address:
        async with websockets.connect(f"ws://{address}/v1/realtime") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(bytes(60 * 1024))}))
            event = json.loads(await ws.recv())
            assert event["error"]["code"] == "message_too_large"


async def test_the_ga_client_gets_ga_event_names_and_g711_audio(http: str, cluster: Cluster) -> None:
    async with openai_client(http).realtime.connect(model="step-audio") as connection:
        await connection.recv()
        await connection.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcma"}}},
            }
        )
        updated = await connection.recv()
        assert updated.type == "session.updated" and updated.session.audio.output.format.type == "audio/pcma"
        pcm_8k = (0.3 * np.sin(np.arange(1600) / 5) * 32767).astype("<i2").tobytes()
        await connection.input_audio_buffer.append(audio=b64(g711.encode(pcm_8k, "g711_ulaw")))
        for _ in range(2):
            await connection.input_audio_buffer.append(audio=b64(bytes([0xFF]) * 1600))  # μ-law silence
        events = await events_until(connection, "response.done")
    kinds = [e.type for e in events]
    assert "conversation.item.added" in kinds and "conversation.item.done" in kinds
    assert "response.output_audio_transcript.delta" in kinds and "response.output_audio.done" in kinds
    transcript = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    heard = int(transcript.transcript.split()[1])
    assert 3200 <= heard <= 6600  # 0.2 s of speech at 16 kHz (and the resampler's tail): μ-law was decoded at 8 kHz
    alaw = audio_of(events, "response.output_audio.delta")
    reply = cluster.chat.reply
    assert len(alaw) / 8000 == pytest.approx(0.01 * len(reply), abs=0.05)  # one byte a sample at 8 kHz
    pcm = np.frombuffer(g711.decode(alaw, "g711_alaw"), dtype="<i2")
    assert np.abs(pcm).max() > 8000  # the fake voice's tone, not silence


async def test_response_cancel_and_barge_in_end_a_reply_as_cancelled(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.chat.hold = 2
    await cluster.start()
    try:
        async with http_service(cluster.address) as address:
            async with openai_client(address).beta.realtime.connect(model="step-audio") as connection:
                await connection.recv()
                await connection.conversation.item.create(
                    item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
                )
                await connection.response.create()
                await events_until(connection, "response.audio_transcript.delta")
                await connection.response.create()  # one response at a time
                refused = await events_until(connection, "error")
                assert refused[-1].error.code == "conversation_already_has_active_response"
                await connection.response.cancel()
                cancelled = await events_until(connection, "response.done")
                assert cancelled[-1].response.status == "cancelled"
                assert cancelled[-1].response.status_details.reason == "client_cancelled"

                await speak(connection)
                await events_until(connection, "response.audio_transcript.delta")  # the reply holds after 2 words
                await connection.input_audio_buffer.append(audio=b64(SPEECH))  # the user talks over it
                events = await events_until(connection, "response.done")
                assert events[-1].response.status == "cancelled"
                assert events[-1].response.status_details.reason == "turn_detected"
                assert "input_audio_buffer.speech_started" in [e.type for e in events]
    finally:
        cluster.chat.release.set()
        await cluster.stop()


async def test_with_server_vad_commit_ends_the_utterance_and_clear_drops_it(http: str) -> None:
    async with openai_client(http).beta.realtime.connect(model="step-audio") as connection:
        await connection.recv()
        await connection.input_audio_buffer.commit()  # nothing spoken yet
        assert (await connection.recv()).error.code == "input_audio_buffer_commit_empty"
        await connection.input_audio_buffer.append(audio=b64(SPEECH))
        assert (await connection.recv()).type == "input_audio_buffer.speech_started"
        await connection.input_audio_buffer.clear()
        assert (await connection.recv()).type == "input_audio_buffer.cleared"
        await connection.input_audio_buffer.append(audio=b64(SPEECH))  # a new stream: the cleared speech is gone
        started = await connection.recv()
        assert started.type == "input_audio_buffer.speech_started" and started.audio_start_ms >= 200
        await connection.input_audio_buffer.commit()  # ends the utterance with no silence after it
        events = await events_until(connection, "response.done")
        kinds = [e.type for e in events]
        assert kinds[:2] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
        assert events[-1].response.status == "completed"
        await speak(connection)  # and the next audio is heard again
        assert (await events_until(connection, "response.done"))[-1].response.status == "completed"


async def test_with_server_vad_response_cancel_and_playback_reports_reach_the_gateway(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.chat.hold = 2
    await cluster.start()
    try:
        async with http_service(cluster.address) as address:
            async with openai_client(address).beta.realtime.connect(model="step-audio") as connection:
                await connection.recv()
                await speak(connection)
                first = await events_until(connection, "response.audio.delta")  # "Hello there." is spoken
                await connection.response.cancel()
                done = await events_until(connection, "response.done")
                assert done[-1].response.status_details.reason == "client_cancelled"

                cluster.chat.release = asyncio.Event()
                await speak(connection)
                events = await events_until(connection, "response.audio.delta")
                reply = next(e for e in events if e.type == "response.created").response
                item_id = next(e for e in events if e.type == "response.output_item.added").item.id
                await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=0)
                assert (await events_until(connection, "conversation.item.truncated"))[-1].item_id == item_id
                cluster.chat.hold = 0  # for the reply to come; the one held now waits until it is cut off
                await speak(connection)  # barge-in: the listener heard none of the reply
                cut = await events_until(connection, "response.done")
                assert cut[-1].response.id == reply.id and cut[-1].response.status_details.reason == "turn_detected"
                await events_until(connection, "response.done")
        assert first[0].type == "input_audio_buffer.speech_started"
        history = [(m.role, m.text) for m in cluster.chat.requests[-1][0]]
        # The first reply was cut off after "Hello there." was sent, the second before any of it was heard.
        assert [text for role, text in history if role == "assistant"] == ["Hello there."], history
    finally:
        cluster.chat.release.set()
        await cluster.stop()


async def test_a_client_that_vanishes_mid_reply_leaves_nothing_running(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.chat.hold = 2
    await cluster.start()
    try:
        async with http_service(cluster.address) as address:
            async with openai_client(address).beta.realtime.connect(model="step-audio") as connection:
                await connection.recv()
                await speak(connection)
                await events_until(connection, "response.audio_transcript.delta")
                assert gateway_metrics.ACTIVE_TURNS._value.get() == 1
            await until(
                lambda: not gateway_metrics.ACTIVE_TURNS._value.get() and not http_metrics.WEBSOCKETS_OPEN._value.get()
            )
            assert cluster.chat.closed == 1  # the chat stage's generation was cancelled, not left to finish
            assert cluster.tokenizer.closed_streams == 1
            assert not list(cluster.sessions_dir.glob("*.json"))  # the connection's gateway session was deleted
    finally:
        cluster.chat.release.set()
        await cluster.stop()


async def test_an_idle_connection_is_closed(cluster: Cluster) -> None:
    async with http_service(cluster.address, realtime_idle_timeout_seconds=0.3) as address:
        async with websockets.connect(f"ws://{address}/v1/realtime") as ws:
            await ws.recv()
            event = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert event["error"]["code"] == "idle_timeout"
            with pytest.raises(websockets.ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 5)


# --- the voice_controls extension -------------------------------------------------------------------------------


class EmotiveFakeTtsEngine(FakeTtsEngine):
    """The fake engine plus "fake-emotive", a voice that honours emotion and style (and speed), not language."""

    def voices(self) -> list[VoiceInfo]:
        emotive = VoiceInfo("fake-emotive", "Fake Emotive", ("en-US",), 24000, "fake", ("emotion", "style", "speed"))
        return [*super().voices(), emotive]


@pytest.fixture
async def emotive_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path)
    cluster.tts = EmotiveFakeTtsEngine()
    await cluster.start()
    yield cluster
    await cluster.stop()


async def raw_events_until(ws, last: str, timeout: float = 10) -> list[dict]:
    """Raw server events up to and including the first of type ``last``."""
    events = []
    async with asyncio.timeout(timeout):
        while not events or events[-1]["type"] != last:
            events.append(json.loads(await ws.recv()))
    return events


async def typed_turn(ws, text: str = "Hi", response: dict | None = None) -> list[dict]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send(json.dumps({"type": "response.create", **({"response": response} if response else {})}))
    return await raw_events_until(ws, "response.done")


def audio_of_raw(events: list[dict]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")


def tts_controls(cluster: Cluster) -> set[tuple[str, str | None, str, str | None, float]]:
    """The (voice, emotion, language, style, speed) of every text the TTS engine spoke since the last call."""
    spoken = {(voice, c.emotion, c.language, c.style, c.speed) for _, voice, c in cluster.tts.texts}
    cluster.tts.texts.clear()
    return spoken


async def test_voice_controls_are_echoed_and_reach_the_tts_engine_in_a_chat_turn(emotive_cluster: Cluster) -> None:
    async with http_service(emotive_cluster.address) as address:
        async with websockets.connect(f"ws://{address}/v1/realtime") as ws:
            created = json.loads(await ws.recv())["session"]
            assert created["voice_controls"] == {"emotion": "", "language": "", "style": ""}
            assert created["voice_controls_ignored"] == []
            session = {
                "voice": "fake-emotive",
                "speed": 1.25,
                "turn_detection": None,
                "voice_controls": {"emotion": "happy", "language": "zh-sichuan", "style": "rap"},
            }
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            updated = json.loads(await ws.recv())
            assert updated["type"] == "session.updated"
            assert updated["session"]["voice_controls"] == session["voice_controls"]
            assert updated["session"]["voice_controls_ignored"] == ["language"]  # fake-emotive has no language
            events = await typed_turn(ws)
            assert events[-1]["response"]["status"] == "completed" and audio_of_raw(events)
            assert tts_controls(emotive_cluster) == {("fake-emotive", "happy", "", "rap", 1.25)}

            # A control left out keeps its value; "" clears one.
            await ws.send(json.dumps({"type": "session.update", "session": {"voice_controls": {"style": ""}}}))
            updated = json.loads(await ws.recv())["session"]
            assert updated["voice_controls"] == {"emotion": "happy", "language": "zh-sichuan", "style": ""}
            # A response can override the controls, like the voice.
            events = await typed_turn(ws, response={"voice_controls": {"emotion": "sad"}})
            assert events[-1]["response"]["status"] == "completed"
            assert tts_controls(emotive_cluster) == {("fake-emotive", "sad", "", None, 1.25)}


async def test_voice_controls_reach_the_streaming_chat_of_a_ga_session(emotive_cluster: Cluster) -> None:
    async with http_service(emotive_cluster.address) as address:
        async with openai_client(address).realtime.connect(model="step-audio") as connection:
            await connection.recv()
            await connection.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {"output": {"voice": "fake-emotive"}},
                        "voice_controls": {"emotion": "angry", "style": "humming"},
                    },
                }
            )
            updated = (await connection.recv()).to_dict()
            assert updated["type"] == "session.updated" and updated["session"]["type"] == "realtime"
            assert updated["session"]["audio"]["output"]["voice"] == "fake-emotive"
            assert updated["session"]["voice_controls"] == {"emotion": "angry", "language": "", "style": "humming"}
            assert updated["session"]["voice_controls_ignored"] == []
            await speak(connection)
            events = await events_until(connection, "response.done")
    assert events[-1].response.status == "completed" and audio_of(events, "response.output_audio.delta")
    assert tts_controls(emotive_cluster) == {("fake-emotive", "angry", "", "humming", 1.0)}


async def test_controls_the_voice_does_not_honour_are_dropped_not_fatal(emotive_cluster: Cluster) -> None:
    async with http_service(emotive_cluster.address) as address:
        async with websockets.connect(f"ws://{address}/v1/realtime") as ws:
            await ws.recv()
            # OpenAI's voice names leave the voice to the gateway: only what every voice honours is kept, and the
            # fake-en and fake-zh voices honour no emotion.
            session = {"voice": "alloy", "turn_detection": None, "voice_controls": {"emotion": "coquettish"}}
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            assert json.loads(await ws.recv())["session"]["voice_controls_ignored"] == ["emotion"]
            events = await typed_turn(ws)
            assert events[-1]["response"]["status"] == "completed" and audio_of_raw(events)
            assert {emotion for _, emotion, *_ in tts_controls(emotive_cluster)} == {None}

            await ws.send(json.dumps({"type": "session.update", "session": {"voice": "fake-en"}}))
            updated = json.loads(await ws.recv())["session"]
            assert updated["voice_controls"]["emotion"] == "coquettish"  # kept, for a voice that honours it
            assert updated["voice_controls_ignored"] == ["emotion"]
            events = await typed_turn(ws, response={"voice": "fake-emotive"})  # this one does
            assert events[-1]["response"]["status"] == "completed"
            assert tts_controls(emotive_cluster) == {("fake-emotive", "coquettish", "", None, 1.0)}
            events = await typed_turn(ws)
            assert events[-1]["response"]["status"] == "completed"
            assert tts_controls(emotive_cluster) == {("fake-en", None, "", None, 1.0)}


async def test_a_bad_voice_control_gets_an_error_naming_it_and_the_socket_keeps_working(http: str) -> None:
    async with websockets.connect(f"ws://{http}/v1/realtime") as ws:
        await ws.recv()
        bad = [
            ({"emotion": "joyful"}, "session.voice_controls.emotion", "invalid_value"),
            ({"language": "fr"}, "session.voice_controls.language", "invalid_value"),
            ({"style": 3}, "session.voice_controls.style", "invalid_value"),
            ({"dialect": "yue"}, "session.voice_controls.dialect", "unknown_parameter"),
            ("happy", "session.voice_controls", None),
        ]
        for controls, param, code in bad:
            await ws.send(json.dumps({"type": "session.update", "session": {"voice_controls": controls}}))
            event = json.loads(await ws.recv())
            assert event["type"] == "error" and event["error"]["param"] == param, event
            assert event["error"]["code"] == code and event["error"]["type"] == "invalid_request_error"
        await ws.send(json.dumps({"type": "session.update", "session": {"voice_controls": {"language": "yue"}}}))
        updated = json.loads(await ws.recv())
        assert updated["type"] == "session.updated"
        assert updated["session"]["voice_controls"] == {"emotion": "", "language": "yue", "style": ""}


def test_voice_control_names_are_the_tts_stages() -> None:
    assert tuple(CONTROL_VALUES["emotion"]) == EMOTIONS and tuple(CONTROL_VALUES["style"]) == STYLES


# --- the protocol's pure parts ----------------------------------------------------------------------------------


def config() -> SessionConfig:
    return SessionConfig(id="sess_1", model="m")


def test_session_update_takes_the_beta_and_the_ga_shape() -> None:
    beta = apply_session_update(
        config(),
        {
            "voice": "fake-en",
            "input_audio_format": "g711_alaw",
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
            "input_audio_transcription": {"model": "whisper-1", "language": "zh"},
            "modalities": ["text"],
            "max_response_output_tokens": 100,
            "speed": 1.5,
            "tools": [{"type": "function", "name": "ignored"}],
        },
        SPEED_RANGE,
    )
    assert beta.voice == "fake-en" and beta.input_format == AUDIO_FORMATS["g711_alaw"]
    assert beta.turn_detection.silence_duration_ms == 800 and beta.language == "zh"
    assert not beta.speaks and beta.max_output_tokens == 100 and beta.speed == 1.5
    ga = apply_session_update(
        config(),
        {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcmu"}, "voice": {"id": "fake-zh"}, "speed": 0.8},
            },
            "max_output_tokens": "inf",
        },
        SPEED_RANGE,
    )
    assert ga.turn_detection is None and ga.output_format == AUDIO_FORMATS["g711_ulaw"] and ga.voice == "fake-zh"
    assert ga.speaks and ga.max_output_tokens is None and ga.speed == 0.8


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ("not an object", "session"),
        ({"input_audio_format": "mp3"}, "session.input_audio_format"),
        ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "session.audio.input.format.rate"),
        ({"turn_detection": {"type": "push_to_talk"}}, "session.turn_detection.type"),
        ({"turn_detection": {"create_response": False}}, "session.turn_detection.create_response"),
        ({"modalities": []}, "session.modalities"),
        ({"temperature": "hot"}, "session.temperature"),
        ({"max_response_output_tokens": 0}, "session.max_response_output_tokens"),
        ({"speed": 4.0}, "session.speed"),
        ({"voice": ""}, "session.voice"),
        ({"voice_controls": {"emotion": "joyful"}}, "session.voice_controls.emotion"),
        ({"voice_controls": ["happy"]}, "session.voice_controls"),
    ],
)
def test_a_bad_session_field_is_named(session: object, param: str) -> None:
    with pytest.raises(RealtimeError) as raised:
        apply_session_update(config(), session, SPEED_RANGE)
    assert raised.value.param == param


def test_a_cancelled_response_ends_with_its_reason_and_what_was_sent() -> None:
    response = Response(config(), "beta", previous_item_id="item_0")
    response.text_delta("Hello")
    response.audio_delta(b64(bytes(4800)), 4800)
    events = response.closing("cancelled", reason="turn_detected")
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
    assert done["output"][0]["status"] == "incomplete" and done["output"][0]["content"][0]["transcript"] == "Hello"
    assert response.audio_seconds == pytest.approx(0.1)


def test_reply_audio_at_another_rate_is_resampled_to_the_output_rate() -> None:
    response = Response(config(), "beta", previous_item_id=None)
    tone = (0.3 * np.sin(np.arange(22050) / 5) * 32767).astype("<i2").tobytes()
    pieces = [realtime._resampled(response, tone[i : i + 4410], 22050) for i in range(0, len(tone), 4410)]
    pieces.append(realtime._resampled(response, b"", 0, last=True))
    assert len(b"".join(pieces)) / 2 == pytest.approx(RATE, abs=2)  # 1 s at 22.05 kHz is 1 s at 24 kHz


def test_g711_round_trips_within_its_quantisation() -> None:
    for law in g711.FORMATS:
        assert g711.encode(g711.decode(bytes(range(256)), law), law) == bytes(range(256)) or law == "g711_ulaw"
        samples = (np.sin(np.arange(8000) / 10) * 20000).astype("<i2")
        back = np.frombuffer(g711.decode(g711.encode(samples.tobytes(), law), law), dtype="<i2")
        assert np.abs(back.astype(int) - samples).max() <= 1024  # the largest step of the top segment
    assert g711.decode(bytes([0xFF, 0x00]), "g711_ulaw") == np.array([0, -32124], "<i2").tobytes()
    assert g711.decode(bytes([0xD5, 0x2A]), "g711_alaw") == np.array([8, -32256], "<i2").tobytes()
