"""OpenAI speech options turned into the gateway's: voice names, ``speed``, ``instructions`` and audio formats.

``instructions`` is free text; the words in it that name an emotion, a language or dialect, or a style become the
typed ``VoiceControls`` the TTS stage honours (the first match of each kind wins). Every other word is ignored: the
stage has no free-form prompt to pass it to. So is a control the chosen voice does not support (its
``supported_controls``): instructions are advice. The ``speed`` field, by contrast, is a number the caller set on
purpose, and one outside the voices' range is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping

from pydantic import BaseModel
from stepaudio.common.v1 import speech_pb2

from services.common.codecs import OUTPUT_FORMATS
from services.http.errors import invalid_request
from services.http.settings import HttpSettings


class VoiceRef(BaseModel):
    """OpenAI's custom-voice reference, ``{"id": "voice_1234"}``."""

    id: str


# The values of the typed controls, by the names clients use for them (``session.voice_controls`` of the Realtime
# WebSocket), as VoiceControls takes them: an Emotion, a BCP-47 language/dialect tag, a SpeechStyle.
CONTROL_VALUES: dict[str, dict[str, int | str]] = {
    "emotion": {
        "happy": speech_pb2.EMOTION_HAPPY,
        "angry": speech_pb2.EMOTION_ANGRY,
        "sad": speech_pb2.EMOTION_SAD,
        "coquettish": speech_pb2.EMOTION_COQUETTISH,
    },
    "language": {tag: tag for tag in ("zh", "en", "ja", "ko", "zh-sichuan", "yue")},
    "style": {"rap": speech_pb2.SPEECH_STYLE_RAP, "humming": speech_pb2.SPEECH_STYLE_HUMMING},
}

# The words (English, lower case) and phrases (Chinese) of each control value in ``instructions``. Chinese has no
# spaces, so Chinese phrases match anywhere in the text; English words match whole words only ("sad" is not in
# "crusade"). Order matters where phrases overlap: a dialect before its language.
_INSTRUCTION_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "emotion": {
        "happy": ("happy", "happily", "cheerful", "cheerfully", "joyful", "joyfully", "excited", "glad", "delighted",
                  "高兴", "开心", "快乐", "愉快"),
        "angry": ("angry", "angrily", "furious", "furiously", "mad", "annoyed", "irritated", "生气", "愤怒", "恼火"),
        "sad": ("sad", "sadly", "sorrowful", "unhappy", "melancholy", "mournful", "gloomy", "悲伤", "难过", "伤心"),
        "coquettish": ("coquettish", "coquettishly", "flirty", "flirtatious", "cutesy", "撒娇"),
    },
    "language": {
        "zh-sichuan": ("sichuanese", "sichuan", "szechuan", "四川话", "四川"),
        "yue": ("cantonese", "粤语", "广东话"),
        "en": ("english", "英文", "英语"),
        "ja": ("japanese", "日语", "日文"),
        "ko": ("korean", "韩语", "韩文"),
        "zh": ("chinese", "mandarin", "中文", "普通话", "汉语"),
    },
    "style": {
        "rap": ("rap", "rapping", "rapper", "说唱"),
        "humming": ("hum", "humming", "hummed", "哼唱"),
    },
}  # fmt: skip
_ENGLISH_WORD = re.compile(r"[a-z]+")


def voice_controls(named: Mapping[str, str], supported: Collection[str] | None = None) -> speech_pb2.VoiceControls:
    """VoiceControls from control names to value names as ``CONTROL_VALUES`` spells them ("": none), keeping only
    the ``supported`` controls (a voice's ``supported_controls``; None: all)."""
    return speech_pb2.VoiceControls(
        **{
            control: CONTROL_VALUES[control][value]
            for control, value in named.items()
            if value and (supported is None or control in supported)
        }
    )


def _first_named(text: str, words: set[str], vocabulary: dict[str, tuple[str, ...]]) -> str:
    """The first value of ``vocabulary`` one of whose words or phrases ``text`` contains (vocabulary order); ""
    for none."""
    for value, names in vocabulary.items():
        for name in names:
            if (name in words) if name.isascii() else (name in text):
                return value
    return ""


def controls_from_instructions(instructions: str, supported: Collection[str] | None = None) -> speech_pb2.VoiceControls:
    """The emotion, language/dialect and style ``instructions`` names, keeping only the ``supported`` ones (a
    voice's ``supported_controls``; None: all); an empty message when it names none."""
    text = instructions.lower()
    words = set(_ENGLISH_WORD.findall(text))
    named = {control: _first_named(text, words, vocabulary) for control, vocabulary in _INSTRUCTION_WORDS.items()}
    return voice_controls(named, supported)


def resolve_voice(voice: str | VoiceRef | None, settings: HttpSettings, param: str = "voice") -> str:
    """The cluster voice id for an OpenAI ``voice``: an alias (OpenAI's names) mapped, anything else as given;
    "" is the cluster's default choice."""
    if voice is None:
        return ""
    voice_id = voice.id if isinstance(voice, VoiceRef) else voice
    voice_id = voice_id.strip()
    if voice_id.lower() in settings.voice_aliases:
        return settings.voice_aliases[voice_id.lower()]
    if not voice_id:
        raise invalid_request("voice is empty: name a voice from GET /v1/voices", param=param)
    return voice_id


def check_speed(speed: float, settings: HttpSettings) -> float:
    """``speed`` as the TTS stage takes it; out of its range is a 400 that states the range."""
    if not math.isfinite(speed) or not settings.min_speed <= speed <= settings.max_speed:
        raise invalid_request(
            f"speed {speed:g} is out of range: this service's voices take {settings.min_speed:g} to "
            f"{settings.max_speed:g} (1.0 is normal)",
            param="speed",
        )
    return speed


def check_audio_format(fmt: str, param: str = "response_format") -> str:
    """One of codecs.OUTPUT_FORMATS ("pcm16", the chat-completions name of raw PCM, is "pcm")."""
    fmt = "pcm" if fmt == "pcm16" else fmt
    if fmt not in OUTPUT_FORMATS:
        raise invalid_request(f"{param} {fmt[:40]!r} is not supported: use one of {', '.join(OUTPUT_FORMATS)}", param)
    return fmt
