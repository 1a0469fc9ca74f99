"""The user's detected emotion end to end on in-process servers with fake engines: the tokenizer reports it in
transcripts, the gateway returns it in the transcript event and TurnSummary, tells the chat model, asks the chat model
for its own reading when it hears audio tokens, and in the empathetic reply mode chooses the reply's emotion control.
Where no engine can tell, every field says "not detected"."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from stepaudio.common.v1 import speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from stepaudio_client.client import wav_audio

from services.chat.engine import EngineInfo, Message, Sampling, Usage
from services.common.emotion import NOT_DETECTED, EmotionReading, from_message, to_message
from services.gateway.emotion import parse_chat_reading
from services.gateway.settings import GatewaySettings
from services.tokenizer.engine import StreamOptions, TokenizerEvent, TokenizerStream, TranscriptEvent
from services.tokenizer.servicer import clip_emotion
from services.tts.engine import VoiceInfo
from tests.fakes import FakeChatEngine, FakeTokenizerEngine, FakeTokenizerStream, FakeTtsEngine
from tests.unit.test_audio import tone, wav
from tests.unit.test_gateway import Cluster
from tests.unit.test_stage_servicers import expect_code
from tests.unit.test_streaming_chat import FORMAT, SILENCE, SPEECH, Microphone, drain

SAD = EmotionReading("sad", 0.9, "fake-ser")
READING_ANSWER = "sad"


class EmotionTokenizerStream(FakeTokenizerStream):
    """The fake tokenizer's utterances, each with the next reading of ``engine.readings`` (the last one repeats)."""

    def _endpoint(self) -> list[TokenizerEvent]:
        events = super()._endpoint()
        readings = self.engine.readings
        for index, event in enumerate(events):
            if isinstance(event, TranscriptEvent):
                reading = readings[min(self.engine.utterances, len(readings) - 1)]
                self.engine.utterances += 1
                events[index] = TranscriptEvent(
                    event.text, event.language, event.start_seconds, event.end_seconds, emotion=reading
                )
        return events


class EmotionTokenizerEngine(FakeTokenizerEngine):
    def __init__(self, *readings: EmotionReading, supports_tokens: bool = True) -> None:
        super().__init__(supports_tokens)
        self.readings = list(readings) or [NOT_DETECTED]
        self.utterances = 0

    def open_stream(self, options: StreamOptions) -> TokenizerStream:
        super().open_stream(options)
        return EmotionTokenizerStream(self, options)


class EmotiveTtsEngine(FakeTtsEngine):
    """The fake voices plus one that honours the emotion control (as the Step-Audio voices do)."""

    def voices(self) -> list[VoiceInfo]:
        emotive = VoiceInfo("fake-emotive", "Fake emotive", ("en-US",), 16000, "fake", ("emotion", "speed", "volume"))
        return [*super().voices(), emotive]


class HearingChatEngine(FakeChatEngine):
    """A chat engine that reads audio tokens (as Step-Audio-Chat does): it answers the emotion question with
    ``reading`` and anything else with the usual reply."""

    def __init__(self, reading: str = READING_ANSWER) -> None:
        super().__init__()
        self.reading = reading

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("fake", "fake-model", True, 4096, Sampling(0.7, 0.9, 50, 64, 1.0))

    def generate(self, messages: list[Message], sampling: Sampling, usage: Usage) -> AsyncIterator[str]:
        if messages[0].text == GatewaySettings().chat_emotion_prompt:
            self.requests.append((messages, sampling))
            return self._answer()
        return super().generate(messages, sampling, usage)

    async def _answer(self) -> AsyncIterator[str]:
        yield self.reading


async def start(tmp_path: Path, tokenizer=None, chat=None, **settings) -> Cluster:
    cluster = Cluster(tmp_path, **settings)
    cluster.tokenizer = tokenizer or EmotionTokenizerEngine(SAD)
    cluster.tts = EmotiveTtsEngine()
    if chat is not None:
        cluster.chat = chat
    await cluster.start()
    return cluster


@pytest.fixture
async def stop_after():
    started: list[Cluster] = []
    yield started.append
    for cluster in started:
        await cluster.stop()


def spoken(seconds: float = 0.5):
    return wav_audio(wav(tone(seconds, 16000), 16000))


def system_text(cluster: Cluster, index: int = -1) -> str:
    messages, _ = cluster.chat.requests[index]
    assert messages[0].role == "system"
    return messages[0].text


# --- the plain value and its wire form ----------------------------------------------------------------------------


def test_a_reading_round_trips_through_the_wire_and_not_detected_is_explicit() -> None:
    for reading in (SAD, EmotionReading("happy", None, "chat:x"), EmotionReading(None, None, "chat:x"), NOT_DETECTED):
        back = from_message(to_message(reading))
        assert (back.label, back.engine) == (reading.label, reading.engine)
        assert back.confidence == (None if reading.confidence is None else pytest.approx(reading.confidence))
    message = to_message(NOT_DETECTED)
    assert message.emotion == speech_pb2.SPEAKER_EMOTION_UNSPECIFIED and not message.HasField("confidence")
    assert message.engine == ""
    assert not to_message(EmotionReading("happy", None, "chat:x")).HasField("confidence")


@pytest.mark.parametrize(
    "bad",
    [
        dict(label="bored"),
        dict(label="sad", confidence=1.5),
        dict(label="sad", confidence=float("nan")),
        dict(label=None, confidence=0.5),
    ],
)
def test_a_reading_refuses_what_is_not_a_label_or_a_probability(bad: dict) -> None:
    with pytest.raises(ValueError):
        EmotionReading(**bad)


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("sad", "sad"),
        (" Happy.\n", "happy"),
        ('"angry"', "angry"),
        ("「悲伤」。", "sad"),
        ("高兴", "happy"),
        ("neutral", "neutral"),
        ("Surprised!", "surprised"),
        ("unknown", None),
        ("未知", None),
        ("不高兴", None),  # a negation is not the label it contains
        ("not happy", None),
        ("happy or sad", None),
        ("I think the speaker is sad", None),
        ("", None),
        ("<audio_12>", None),
    ],
)
def test_the_chat_models_answer_counts_only_when_it_is_exactly_one_label_word(answer: str, label: str | None) -> None:
    reading = parse_chat_reading(answer, "chat:m")
    assert (reading.label, reading.confidence, reading.engine) == (label, None, "chat:m")


def test_the_context_template_may_only_name_the_emotion() -> None:
    assert GatewaySettings(emotion_context="They sound {emotion}.").emotion_context == "They sound {emotion}."
    with pytest.raises(ValueError, match="confidence"):
        GatewaySettings(emotion_context="They sound {emotion} ({confidence}).")


# --- tokenizer stage ------------------------------------------------------------------------------------------------


def test_a_clip_has_the_emotion_of_its_longest_utterance_with_one() -> None:
    happy = EmotionReading("happy", 0.6, "fake-ser")
    short_happy = TranscriptEvent("a", "en", 0.0, 0.5, emotion=happy)
    long_sad = TranscriptEvent("b", "en", 1.0, 2.0, emotion=SAD)
    longest_undecided = TranscriptEvent("c", "en", 2.0, 9.0, emotion=EmotionReading(None, None, "fake-ser"))
    assert clip_emotion([short_happy, long_sad, longest_undecided]) == SAD
    assert clip_emotion([TranscriptEvent("c", "en", 0.0, 1.0), longest_undecided]).engine == "fake-ser"
    assert clip_emotion([TranscriptEvent("c", "en", 0.0, 1.0)]) == NOT_DETECTED
    assert clip_emotion([]) == NOT_DETECTED


async def test_tokenizer_transcripts_carry_each_utterances_emotion(tmp_path: Path, stop_after) -> None:
    happy = EmotionReading("happy", 0.6, "fake-ser")
    cluster = await start(tmp_path, EmotionTokenizerEngine(happy, SAD))
    stop_after(cluster)
    speech = (0.3 * np.sin(np.arange(3200) / 5) * 32767).astype("<i2").tobytes()

    async def requests():
        yield tokenizer_pb2.StreamingTokenizeRequest(
            config=tokenizer_pb2.TokenizeConfig(format=FORMAT, emit_transcript=True)
        )
        for piece in (speech, bytes(3200), speech, speech, bytes(3200)):
            yield tokenizer_pb2.StreamingTokenizeRequest(audio_content=piece)

    address = cluster.servers["tokenizer"][1]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        responses = [r async for r in stub.StreamingTokenize(requests())]
        transcripts = [r.transcript for r in responses if r.HasField("transcript")]
        assert [t.emotion.emotion for t in transcripts] == [
            speech_pb2.SPEAKER_EMOTION_HAPPY,
            speech_pb2.SPEAKER_EMOTION_SAD,
        ]
        assert transcripts[0].emotion.confidence == pytest.approx(0.6)
        assert {t.emotion.engine for t in transcripts} == {"fake-ser"}
        response = await stub.Tokenize(
            tokenizer_pb2.TokenizeRequest(config=tokenizer_pb2.TokenizeConfig(emit_transcript=True), audio=spoken())
        )
    assert response.transcript.emotion == to_message(SAD)  # the last reading repeats


# --- Chat -----------------------------------------------------------------------------------------------------------


async def test_a_spoken_turn_returns_the_emotion_and_tells_the_chat_model(tmp_path: Path, stop_after) -> None:
    cluster = await start(tmp_path)
    stop_after(cluster)
    call = cluster.client.chat_stream(audio=spoken())
    events = [event async for event in call]
    transcript = events[0].user_transcript
    assert transcript.emotion.emotion == speech_pb2.SPEAKER_EMOTION_SAD
    assert transcript.emotion.confidence == pytest.approx(0.9) and transcript.emotion.engine == "fake-ser"
    summary = events[-1].summary
    assert summary.user_emotion == transcript.emotion
    assert summary.reply_emotion == speech_pb2.EMOTION_UNSPECIFIED  # not empathetic: the request's (none)
    assert system_text(cluster).endswith("\nThe user's voice sounds sad; let your reply suit it.")
    assert {controls.emotion for _, _, controls in cluster.tts.texts} == {None}
    # History keeps what was said, not the note.
    messages, _ = cluster.chat.requests[-1]
    assert messages[-1].text == "heard 8000 samples"


async def test_the_empathetic_mode_speaks_sadness_back_softly_on_a_voice_that_supports_emotion(
    tmp_path: Path, stop_after
) -> None:
    cluster = await start(tmp_path)
    stop_after(cluster)
    result = await cluster.client.chat(
        audio=spoken(), voice_id="fake-emotive", reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC
    )
    assert [controls.emotion for _, _, controls in cluster.tts.texts] == ["sad", "sad", "sad"]
    assert result.summary.reply_emotion == speech_pb2.EMOTION_SAD
    assert result.user_emotion.emotion == speech_pb2.SPEAKER_EMOTION_SAD
    assert len(result.pcm) > 0


async def test_the_empathetic_mode_keeps_the_request_on_a_voice_without_the_emotion_control(
    tmp_path: Path, stop_after
) -> None:
    cluster = await start(tmp_path)
    stop_after(cluster)
    result = await cluster.client.chat(audio=spoken(), voice_id="fake-en", reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC)
    assert {controls.emotion for _, _, controls in cluster.tts.texts} == {None}  # no INVALID_ARGUMENT from TTS
    assert result.summary.reply_emotion == speech_pb2.EMOTION_UNSPECIFIED and len(result.pcm) > 0


async def test_anger_is_answered_with_the_neutral_delivery_even_over_the_requested_emotion(
    tmp_path: Path, stop_after
) -> None:
    cluster = await start(tmp_path, EmotionTokenizerEngine(EmotionReading("angry", 0.8, "fake-ser")))
    stop_after(cluster)
    happy = speech_pb2.VoiceControls(emotion=speech_pb2.EMOTION_HAPPY)
    plain = await cluster.client.chat(audio=spoken(), voice_id="fake-emotive", controls=happy)
    assert plain.summary.reply_emotion == speech_pb2.EMOTION_HAPPY
    assert {controls.emotion for _, _, controls in cluster.tts.texts} == {"happy"}
    cluster.tts.texts.clear()
    empathetic = await cluster.client.chat(
        audio=spoken(), voice_id="fake-emotive", controls=happy, reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC
    )
    assert {controls.emotion for _, _, controls in cluster.tts.texts} == {None}
    assert empathetic.summary.reply_emotion == speech_pb2.EMOTION_UNSPECIFIED


async def test_a_reading_below_the_minimum_confidence_is_reported_but_not_acted_on(tmp_path: Path, stop_after) -> None:
    cluster = await start(tmp_path, EmotionTokenizerEngine(EmotionReading("sad", 0.3, "fake-ser")))
    stop_after(cluster)
    result = await cluster.client.chat(
        audio=spoken(), voice_id="fake-emotive", reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC
    )
    assert result.user_emotion.emotion == speech_pb2.SPEAKER_EMOTION_SAD
    assert result.user_emotion.confidence == pytest.approx(0.3)
    assert "sounds" not in system_text(cluster)
    assert {controls.emotion for _, _, controls in cluster.tts.texts} == {None}


async def test_where_no_engine_can_tell_every_field_says_not_detected(tmp_path: Path, stop_after) -> None:
    cluster = await start(tmp_path, EmotionTokenizerEngine(NOT_DETECTED))
    stop_after(cluster)
    happy = speech_pb2.VoiceControls(emotion=speech_pb2.EMOTION_HAPPY)
    result = await cluster.client.chat(
        audio=spoken(), voice_id="fake-emotive", controls=happy, reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC
    )
    assert result.user_emotion == speech_pb2.DetectedEmotion()  # SPEAKER_EMOTION_UNSPECIFIED, no confidence, no engine
    assert result.summary.user_emotion == speech_pb2.DetectedEmotion()
    assert result.summary.reply_emotion == speech_pb2.EMOTION_HAPPY  # nothing detected: the request stands
    assert system_text(cluster) == GatewaySettings().default_system_prompt
    text = await cluster.client.chat("hello", text_only=True, reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC)
    assert text.summary.user_emotion == speech_pb2.DetectedEmotion()


async def test_an_unknown_reply_mode_is_invalid_argument(tmp_path: Path, stop_after) -> None:
    cluster = await start(tmp_path)
    stop_after(cluster)
    await expect_code(cluster.client.chat("hi", reply_mode=7), grpc.StatusCode.INVALID_ARGUMENT, "reply_mode 7")
    config = gateway_pb2.StreamingChatConfig(input_format=FORMAT, reply_mode=9)
    mic = Microphone(config)
    mic.hang_up()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await drain(cluster.client.stub.StreamingChat(mic.requests()))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- the chat model's own reading (audio tokens, as on the step-audio profile) -----------------------------------


async def test_the_chat_model_reads_the_emotion_from_the_audio_tokens_it_hears(tmp_path: Path, stop_after) -> None:
    chat = HearingChatEngine("Sad.")
    cluster = await start(tmp_path, EmotionTokenizerEngine(NOT_DETECTED), chat)
    stop_after(cluster)
    result = await cluster.client.chat(
        audio=spoken(), voice_id="fake-emotive", reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC
    )
    reading_messages, reading_sampling = chat.requests[0]
    assert [m.role for m in reading_messages] == ["system", "user"]
    assert reading_messages[1].audio_tokens.count("<audio_") > 0 and reading_messages[1].text == ""
    assert (reading_sampling.temperature, reading_sampling.max_tokens) == (0.0, 8)
    emotion = result.user_emotion
    assert emotion.emotion == speech_pb2.SPEAKER_EMOTION_SAD and emotion.engine == "chat:fake-model"
    assert not emotion.HasField("confidence")  # a chat model's word, not a probability
    assert result.summary.user_emotion == emotion
    reply_messages, _ = chat.requests[1]
    assert reply_messages[0].text.endswith("sounds sad; let your reply suit it.")
    assert reply_messages[-1].audio_tokens == reading_messages[1].audio_tokens  # the reply hears the same audio
    assert {controls.emotion for _, _, controls in cluster.tts.texts} == {"sad"}


async def test_a_chat_model_answer_that_is_not_a_label_is_not_detected(tmp_path: Path, stop_after) -> None:
    chat = HearingChatEngine("The speaker seems a bit sad")
    cluster = await start(tmp_path, EmotionTokenizerEngine(NOT_DETECTED), chat)
    stop_after(cluster)
    result = await cluster.client.chat(audio=spoken(), reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC)
    emotion = result.user_emotion
    assert emotion.emotion == speech_pb2.SPEAKER_EMOTION_UNSPECIFIED and emotion.engine == "chat:fake-model"
    assert "sounds" not in system_text(cluster)


async def test_the_chat_reading_is_skipped_when_turned_off_or_when_the_tokenizer_could_tell(
    tmp_path: Path, stop_after
) -> None:
    chat = HearingChatEngine()
    off = await start(tmp_path / "off", EmotionTokenizerEngine(NOT_DETECTED), chat, chat_emotion_reading=False)
    stop_after(off)
    result = await off.client.chat(audio=spoken())
    assert len(chat.requests) == 1 and result.user_emotion == speech_pb2.DetectedEmotion()
    chat = HearingChatEngine()
    told = await start(tmp_path / "told", EmotionTokenizerEngine(SAD), chat)
    stop_after(told)
    result = await told.client.chat(audio=spoken())
    assert len(chat.requests) == 1 and result.user_emotion.engine == "fake-ser"


# --- StreamingChat --------------------------------------------------------------------------------------------------


async def test_streaming_chat_reports_each_utterances_emotion_and_answers_it_empathetically(
    tmp_path: Path, stop_after
) -> None:
    happy = EmotionReading("happy", 0.7, "fake-ser")
    cluster = await start(tmp_path, EmotionTokenizerEngine(happy, NOT_DETECTED))
    stop_after(cluster)
    config = gateway_pb2.StreamingChatConfig(
        input_format=FORMAT, voice_id="fake-emotive", reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC
    )
    mic = Microphone(config)
    call = cluster.client.stub.StreamingChat(mic.requests())
    transcripts, summaries = [], []
    for _ in range(2):
        mic.say(SPEECH, SILENCE)
        async with asyncio.timeout(10):
            while not (event := await call.read()).HasField("summary"):
                if event.HasField("user_transcript"):
                    transcripts.append(event.user_transcript)
        summaries.append(event.summary)
    mic.hang_up()
    assert await drain(call) == []
    assert [t.emotion for t in transcripts] == [s.user_emotion for s in summaries]
    assert [s.user_emotion.emotion for s in summaries] == [
        speech_pb2.SPEAKER_EMOTION_HAPPY,
        speech_pb2.SPEAKER_EMOTION_UNSPECIFIED,
    ]
    assert [s.reply_emotion for s in summaries] == [speech_pb2.EMOTION_HAPPY, speech_pb2.EMOTION_UNSPECIFIED]
    emotions = [controls.emotion for _, _, controls in cluster.tts.texts]
    assert emotions == ["happy"] * 3 + [None] * 3
    assert "sounds happy" in system_text(cluster, 0) and "sounds" not in system_text(cluster, 1)


# --- the accuracy tool (tools/emotion_eval.py) ----------------------------------------------------------------------


async def test_the_accuracy_tool_scores_readings_against_labels_through_the_gateway(
    tmp_path: Path, stop_after, capsys
) -> None:
    from tools import emotion_eval

    undecided = EmotionReading(None, None, "fake-ser")
    readings = (SAD, EmotionReading("happy", 0.8, "fake-ser"), undecided, EmotionReading("angry", 0.7, "fake-ser"))
    cluster = await start(tmp_path, EmotionTokenizerEngine(*readings))
    stop_after(cluster)
    labels = ["sad", "sad", "happy", "angry"]
    for index in range(len(labels)):
        (tmp_path / f"{index}.wav").write_bytes(wav(tone(0.3, 16000), 16000))
    manifest = tmp_path / "labels.jsonl"
    manifest.write_text("".join(f'{{"file": "{i}.wav", "emotion": "{e}"}}\n' for i, e in enumerate(labels)))
    out = tmp_path / "result.json"
    argv = [str(manifest), "--address", cluster.address, "--out", str(out)]
    assert await asyncio.to_thread(emotion_eval.main, argv) == 0  # the command, in a thread (it runs its own loop)
    report = json.loads(out.read_text())
    assert (report["total"], report["detected"], report["correct"]) == (4, 3, 2)
    assert report["coverage"] == 0.75 and report["accuracy_all"] == 0.5
    assert report["confusion"] == {"angry": {"angry": 1}, "happy": {"not detected": 1}, "sad": {"happy": 1, "sad": 1}}
    assert report["engines"] == ["fake-ser"]
    assert "coverage 75.0%, accuracy 66.7% of detected, 50.0% of all" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text('[{"file": "0.wav", "emotion": "bored"}]')
    with pytest.raises(ValueError, match="bored"):
        emotion_eval.load_manifest(tmp_path / "bad.json")


def test_the_cli_shows_how_the_user_sounded_only_when_an_engine_could_tell() -> None:
    from stepaudio_client.cli import heard

    assert heard(speech_pb2.Transcript(text="你好")) == "你好"
    sad = speech_pb2.Transcript(text="hi", emotion=to_message(EmotionReading("sad", 0.82, "fake-ser")))
    assert heard(sad) == "hi  [sad 0.82, fake-ser]"
    read = speech_pb2.Transcript(text="", emotion=to_message(EmotionReading("happy", None, "chat:m")))
    assert heard(read) == "  [happy, chat:m]"
