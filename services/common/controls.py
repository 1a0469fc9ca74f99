"""Typed voice controls: the protobuf form checked and turned into a plain value.

Shared by the TTS service (which honours them) and the gateway (which rejects bad controls
before any work starts)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from stepaudio.common.v1 import speech_pb2

from services.common.errors import InvalidArgument

# Pitch shift range in semitones (services/tts/postprocess.py applies it; docs/voices.md has the measurements).
MIN_PITCH = -4.0
MAX_PITCH = 4.0
EMOTIONS = ("happy", "angry", "sad", "coquettish")
STYLES = ("rap", "humming")
# A BCP-47 tag, or the dialect spellings Step-Audio's tags accept ("zh_sichuan"); which tags a voice honours is the
# engine's call (services/tts/tags.py).
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8}){0,7}")


@dataclass(frozen=True)
class Controls:
    """Typed voice controls, already range-checked by the servicer.

    ``emotion`` is one of EMOTIONS or None, ``style`` one of STYLES or None, ``language`` a
    BCP-47 tag or "" (the voice's own). ``speed`` and ``volume`` are multipliers (1.0 = normal), ``pitch`` a shift
    in semitones (0.0 = unchanged).
    """

    emotion: str | None = None
    language: str = ""
    style: str | None = None
    speed: float = 1.0
    volume: float = 1.0
    pitch: float = 0.0

    def requested(self) -> tuple[str, ...]:
        """Names of the controls that differ from their neutral value."""
        names = []
        if self.emotion:
            names.append("emotion")
        if self.language:
            names.append("language")
        if self.style:
            names.append("style")
        if self.speed != 1.0:
            names.append("speed")
        if self.volume != 1.0:
            names.append("volume")
        if self.pitch != 0.0:
            names.append("pitch")
        return tuple(names)


_EMOTIONS = {
    speech_pb2.EMOTION_HAPPY: "happy",
    speech_pb2.EMOTION_ANGRY: "angry",
    speech_pb2.EMOTION_SAD: "sad",
    speech_pb2.EMOTION_COQUETTISH: "coquettish",
}
_STYLES = {speech_pb2.SPEECH_STYLE_RAP: "rap", speech_pb2.SPEECH_STYLE_HUMMING: "humming"}


def controls_from_message(message: speech_pb2.VoiceControls) -> Controls:
    if message.emotion and message.emotion not in _EMOTIONS:
        raise InvalidArgument(f"controls.emotion {message.emotion} is not a known Emotion value")
    if message.style and message.style not in _STYLES:
        raise InvalidArgument(f"controls.style {message.style} is not a known SpeechStyle value")
    if message.language and not _LANGUAGE_TAG.fullmatch(message.language):
        raise InvalidArgument(
            f"controls.language {message.language[:40]!r} is not a language tag: use a BCP-47 tag such as "
            "'zh', 'en' or 'zh-sichuan' (empty: the voice's own)"
        )
    speed = _multiplier("speed", message.speed, 0.5, 2.0)
    volume = _multiplier("volume", message.volume, 0.1, 2.0)
    pitch = _semitones(message.pitch)
    return Controls(
        emotion=_EMOTIONS.get(message.emotion),
        language=message.language,
        style=_STYLES.get(message.style),
        speed=speed,
        volume=volume,
        pitch=pitch,
    )


def _multiplier(name: str, value: float, low: float, high: float) -> float:
    """A speed/volume multiplier: 0 (unset) means 1.0; NaN, infinities and values outside [low, high] are refused."""
    if not math.isfinite(value):
        raise InvalidArgument(f"controls.{name} is {value}: use a number in {low:g}..{high:g} (0 means 1.0)")
    value = value or 1.0
    if not low <= value <= high:
        raise InvalidArgument(f"controls.{name} {value:g} is out of range: use {low:g}..{high:g} (0 means 1.0)")
    return value


def _semitones(value: float) -> float:
    """A pitch shift in semitones: 0 is unchanged; NaN, infinities and values outside the range are refused."""
    if not math.isfinite(value) or not MIN_PITCH <= value <= MAX_PITCH:
        raise InvalidArgument(
            f"controls.pitch {value:g} is out of range: use {MIN_PITCH:g}..{MAX_PITCH:g} semitones (0 means unchanged)"
        )
    return float(value)
