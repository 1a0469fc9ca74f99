"""Typed voice controls: the protobuf form checked and turned into a plain value.

Shared by the TTS service (which honours them) and the gateway (which rejects bad controls
before any work starts)."""

from __future__ import annotations

from dataclasses import dataclass

from stepaudio.common.v1 import speech_pb2

from services.common.errors import InvalidArgument

EMOTIONS = ("happy", "angry", "sad", "coquettish")
STYLES = ("rap", "humming")


@dataclass(frozen=True)
class Controls:
    """Typed voice controls, already range-checked by the servicer.

    ``emotion`` is one of EMOTIONS or None, ``style`` one of STYLES or None, ``language`` a
    BCP-47 tag or "" (the voice's own). ``speed`` and ``volume`` are multipliers (1.0 = normal).
    """

    emotion: str | None = None
    language: str = ""
    style: str | None = None
    speed: float = 1.0
    volume: float = 1.0

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
    speed = message.speed or 1.0
    if not 0.5 <= speed <= 2.0:
        raise InvalidArgument(f"controls.speed {speed:g} is out of range: use 0.5..2.0 (0 means 1.0)")
    volume = message.volume or 1.0
    if not 0.1 <= volume <= 2.0:
        raise InvalidArgument(f"controls.volume {volume:g} is out of range: use 0.1..2.0 (0 means 1.0)")
    return Controls(
        emotion=_EMOTIONS.get(message.emotion),
        language=message.language,
        style=_STYLES.get(message.style),
        speed=speed,
        volume=volume,
    )
