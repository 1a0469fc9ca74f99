"""StreamingChat against the real stage servicers with fake engines: VAD-driven turns,
multi-turn context, barge-in with history trimmed to what was heard, and errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from stepaudio.common.v1 import audio_pb2
from stepaudio.gateway.v1 import gateway_pb2

from tests.unit.test_gateway import Cluster
from tests.unit.test_stage_servicers import expect_code

FORMAT = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000, channels=1)
SPEECH = (0.3 * np.sin(np.arange(3200) / 5) * 32767).astype("<i2").tobytes()  # 0.2 s of "speech"
SILENCE = bytes(3200)  # 0.1 s: the fake tokenizer's endpoint


class Microphone:
    """The client's request stream, fed by the test while it reads responses."""

    def __init__(self, config: gateway_pb2.StreamingChatConfig) -> None:
        self.queue: asyncio.Queue[gateway_pb2.StreamingChatRequest | None] = asyncio.Queue()
        self.queue.put_nowait(gateway_pb2.StreamingChatRequest(config=config))

    def say(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.queue.put_nowait(gateway_pb2.StreamingChatRequest(audio_content=piece))

    def played(self, seconds: float) -> None:
        self.queue.put_nowait(
            gateway_pb2.StreamingChatRequest(playback=gateway_pb2.PlaybackProgress(played_seconds=seconds))
        )

    def hang_up(self) -> None:
        self.queue.put_nowait(None)

    async def requests(self) -> AsyncIterator[gateway_pb2.StreamingChatRequest]:
        while (request := await self.queue.get()) is not None:
            yield request


async def read_until(call, kind: str) -> list[str]:
    kinds = []
    async with asyncio.timeout(10):
        while True:
            event = await call.read()
            assert event is not grpc.aio.EOF, f"stream ended before {kind}: {kinds}"
            kinds.append(event.WhichOneof("event"))
            if kinds[-1] == kind:
                return kinds


async def drain(call) -> list[str]:
    kinds = []
    while (event := await call.read()) is not grpc.aio.EOF:
        kinds.append(event.WhichOneof("event"))
    return kinds


@pytest.fixture
async def cluster(tmp_path: Path):
    cluster = Cluster(tmp_path)
    await cluster.start()
    yield cluster
    await cluster.stop()


async def test_each_utterance_gets_a_reply_with_the_earlier_ones_as_context(cluster: Cluster) -> None:
    mic = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT))
    call = cluster.client.stub.StreamingChat(mic.requests())
    mic.say(SPEECH, SILENCE)
    kinds = await read_until(call, "summary")
    assert kinds[:3] == ["user_speech", "user_speech", "user_transcript"]
    assert "audio" in kinds and "reply_text_delta" in kinds
    mic.say(SPEECH, SPEECH, SILENCE)
    await read_until(call, "summary")
    mic.hang_up()
    assert await drain(call) == []
    messages, _ = cluster.chat.requests[1]
    assert [(m.role, m.text) for m in messages[1:]] == [
        ("user", "heard 3200 samples"),
        ("assistant", cluster.chat.reply),
        ("user", "heard 6400 samples"),
    ]


async def test_speech_during_a_reply_interrupts_it_and_history_keeps_what_was_heard(
    cluster: Cluster, tmp_path: Path
) -> None:
    session = await cluster.client.create_session()
    cluster.chat.hold = 2  # the reply stops after its first clause "Hello there." until released
    mic = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT, session_id=session.session_id))
    call = cluster.client.stub.StreamingChat(mic.requests())
    mic.say(SPEECH, SILENCE)
    await read_until(call, "audio")
    # The gateway learns that the clause's audio is complete when its TTS stream ends, just after the chunk the
    # client has read: give it that moment, or the user would have talked over an unfinished clause.
    await asyncio.sleep(0.3)
    mic.say(SPEECH)  # the user talks over the reply
    kinds = await read_until(call, "interrupted")
    assert "summary" not in kinds
    for _ in range(100):
        if cluster.chat.closed:
            break
        await asyncio.sleep(0.01)
    assert cluster.chat.closed == 1 and cluster.chat.finished == 0  # the chat stage was cancelled
    mic.say(SILENCE)  # end of the second utterance: answered normally
    cluster.chat.hold = 0
    await read_until(call, "summary")
    mic.hang_up()
    await drain(call)
    stored = await cluster.client.get_session(session.session_id)
    assert [entry.text for entry in stored.history] == [
        "heard 3200 samples",
        "Hello there.",  # only the clause whose audio had been sent
        "heard 3200 samples",
        cluster.chat.reply,
    ]


async def test_playback_reports_decide_what_was_heard(cluster: Cluster) -> None:
    cluster.chat.hold = 2
    mic = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT))
    call = cluster.client.stub.StreamingChat(mic.requests())
    mic.say(SPEECH, SILENCE)
    await read_until(call, "audio")
    mic.played(0.0)  # audio arrived but the client has not played any of it
    mic.say(SPEECH)
    while True:
        event = await call.read()
        if event.HasField("interrupted"):
            break
    assert event.interrupted.kept_text == "" and event.interrupted.sent_audio_seconds > 0
    call.cancel()


async def test_barge_in_can_be_disabled(cluster: Cluster) -> None:
    cluster.chat.hold = 2
    mic = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT, disable_barge_in=True))
    call = cluster.client.stub.StreamingChat(mic.requests())
    mic.say(SPEECH, SILENCE)
    await read_until(call, "audio")
    mic.say(SPEECH, SILENCE)
    await read_until(call, "user_speech")
    cluster.chat.release.set()
    kinds = await read_until(call, "summary")
    assert "interrupted" not in kinds
    await read_until(call, "summary")  # the second utterance is answered after the first reply
    mic.hang_up()
    await drain(call)


async def test_streaming_chat_errors(cluster: Cluster) -> None:
    async def only_audio():
        yield gateway_pb2.StreamingChatRequest(audio_content=SPEECH)

    await expect_code(cluster.client.stub.StreamingChat(only_audio()), grpc.StatusCode.INVALID_ARGUMENT, "config")
    bad_rate = Microphone(gateway_pb2.StreamingChatConfig(input_format=audio_pb2.AudioFormat(sample_rate_hz=1000)))
    bad_rate.say(SPEECH)
    bad_rate.hang_up()
    await expect_code(
        cluster.client.stub.StreamingChat(bad_rate.requests()), grpc.StatusCode.INVALID_ARGUMENT, "out of range"
    )
    unknown_voice = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT, voice_id="nobody"))
    unknown_voice.hang_up()
    await expect_code(cluster.client.stub.StreamingChat(unknown_voice.requests()), grpc.StatusCode.NOT_FOUND, "nobody")
    twice = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT))
    twice.queue.put_nowait(gateway_pb2.StreamingChatRequest(config=gateway_pb2.StreamingChatConfig()))
    twice.hang_up()
    await expect_code(
        cluster.client.stub.StreamingChat(twice.requests()), grpc.StatusCode.INVALID_ARGUMENT, "one config"
    )
