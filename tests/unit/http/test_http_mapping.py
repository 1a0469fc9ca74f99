"""The HTTP service's pure mappings: OpenAI fields to gateway fields, gateway errors to HTTP errors."""

from __future__ import annotations

import grpc
import pytest
from stepaudio.common.v1 import speech_pb2

from services.http.chat_completions import Message, ReplyTranscripts, system_prompt_for
from services.http.errors import ApiError, api_error_from_grpc, error_body
from services.http.openai_audio import _timestamp, split_text
from services.http.settings import HttpSettings
from services.http.speech_options import (
    VoiceRef,
    check_audio_format,
    check_speed,
    controls_from_instructions,
    resolve_voice,
)


class FakeRpcError(grpc.aio.AioRpcError):
    """A gateway error as the gRPC client raises it, without a server."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
        (grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"),
        (grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
        (grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
        (grpc.StatusCode.ALREADY_EXISTS, 409, "conflict_error"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"),
        (grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"),
        (grpc.StatusCode.INTERNAL, 500, "server_error"),
    ],
)
def test_gateway_errors_map_to_http_statuses(code: grpc.StatusCode, status: int, kind: str) -> None:
    error = api_error_from_grpc(FakeRpcError(code, "what went wrong"))
    assert (error.status_code, error.type, error.message) == (status, kind, "what went wrong")
    assert error_body(error) == {
        "error": {"message": "what went wrong", "type": kind, "param": None, "code": code.name.lower()}
    }


def test_error_body_is_openais_shape() -> None:
    body = error_body(ApiError(400, "speed 9 is out of range", param="speed"))
    assert body == {
        "error": {"message": "speed 9 is out of range", "type": "invalid_request_error", "param": "speed", "code": None}
    }


@pytest.mark.parametrize(
    ("instructions", "expected"),
    [
        ("Speak in a cheerful and positive tone.", speech_pb2.VoiceControls(emotion=speech_pb2.EMOTION_HAPPY)),
        ("用四川话，开心一点", speech_pb2.VoiceControls(emotion=speech_pb2.EMOTION_HAPPY, language="zh-sichuan")),
        ("Sad, in Cantonese, as a rap", speech_pb2.VoiceControls(
            emotion=speech_pb2.EMOTION_SAD, language="yue", style=speech_pb2.SPEECH_STYLE_RAP)),
        ("请用哼唱的方式", speech_pb2.VoiceControls(style=speech_pb2.SPEECH_STYLE_HUMMING)),
        ("Crusade through the madness of trapped thoughts", speech_pb2.VoiceControls()),  # no whole word matches
        ("Talk like a pirate", speech_pb2.VoiceControls()),  # nothing the voices can do: ignored
    ],
)  # fmt: skip
def test_instructions_name_typed_controls(instructions: str, expected: speech_pb2.VoiceControls) -> None:
    assert controls_from_instructions(instructions) == expected


def test_instructions_keep_only_the_controls_the_voice_supports() -> None:
    controls = controls_from_instructions("angry, in English", supported=["speed", "volume", "language"])
    assert controls == speech_pb2.VoiceControls(language="en")


def test_voices_resolve_through_aliases() -> None:
    settings = HttpSettings(voice_aliases={"alloy": "", "echo": "en-joe"})
    assert resolve_voice("alloy", settings) == ""
    assert resolve_voice("Echo", settings) == "en-joe"
    assert resolve_voice(VoiceRef(id="voice_123"), settings) == "voice_123"
    assert resolve_voice("zh-baker", settings) == "zh-baker"
    with pytest.raises(ApiError) as caught:
        resolve_voice("  ", settings)
    assert (caught.value.status_code, caught.value.param) == (400, "voice")


def test_speed_outside_the_voices_range_names_the_range() -> None:
    settings = HttpSettings()
    assert check_speed(1.5, settings) == 1.5
    for speed in (0.25, 4.0, float("nan")):
        with pytest.raises(ApiError, match=r"0\.5 to 2") as caught:
            check_speed(speed, settings)
        assert caught.value.param == "speed"


def test_audio_formats() -> None:
    assert check_audio_format("pcm16") == "pcm"
    assert check_audio_format("opus") == "opus"
    with pytest.raises(ApiError, match="mp3"):
        check_audio_format("ogg")


def test_long_input_is_cut_after_sentences_within_the_limit() -> None:
    text = "One two three. Four five six! 七八九。" + "x" * 25 + " end"
    pieces = split_text(text, 20)
    assert all(len(piece) <= 20 for piece in pieces), pieces
    assert pieces[:2] == ["One two three.", "Four five six! 七八九。"]
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert split_text("short", 2000) == ["short"]


def test_srt_and_vtt_timestamps() -> None:
    assert _timestamp(4.4006, ",") == "00:00:04,401"
    assert _timestamp(3725.5, ".") == "01:02:05.500"


def test_earlier_messages_ride_in_the_system_prompt_newest_first_within_the_budget() -> None:
    transcripts = ReplyTranscripts(capacity=10, ttl_seconds=60)
    transcripts.remember("audio_1", "Paris is the capital.")
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="An old question that does not fit."),
        Message(role="assistant", content="An old answer."),
        Message(role="user", content=[{"type": "text", "text": "Capital of France?"}]),
        Message(role="assistant", audio={"id": "audio_1"}),
        Message(role="user", content=[{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]),
        Message(role="assistant", audio={"id": "audio_forgotten"}),
    ]
    prompt = system_prompt_for(messages, transcripts, max_history_chars=100)
    assert prompt == (
        "Be brief.\n\nEarlier in this conversation:\n"
        "User: Capital of France?\nAssistant: Paris is the capital.\nUser: (spoken message)"
    )
    assert system_prompt_for(messages[:1], transcripts, 100) == "Be brief."


def test_reply_transcripts_are_bounded() -> None:
    transcripts = ReplyTranscripts(capacity=2, ttl_seconds=60)
    for index in range(3):
        transcripts.remember(f"audio_{index}", f"reply {index}")
    assert [transcripts.recall(f"audio_{index}") for index in range(3)] == [None, "reply 1", "reply 2"]
    expired = ReplyTranscripts(capacity=2, ttl_seconds=-1)
    expired.remember("audio_x", "gone")
    assert expired.recall("audio_x") is None
