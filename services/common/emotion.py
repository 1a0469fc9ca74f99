"""The speaker's detected emotion: a plain value for engines, and its wire form (``DetectedEmotion``).

"Not detected" is a value of its own (``NOT_DETECTED``, SPEAKER_EMOTION_UNSPECIFIED on the wire): whatever carries a
reading says so when no engine could tell, and never holds a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stepaudio.common.v1 import speech_pb2

# The labels a reading may hold, in the wire enum's order.
SPEAKER_EMOTIONS = ("neutral", "happy", "sad", "angry", "fearful", "surprised", "disgusted")

_TO_WIRE = {
    "neutral": speech_pb2.SPEAKER_EMOTION_NEUTRAL,
    "happy": speech_pb2.SPEAKER_EMOTION_HAPPY,
    "sad": speech_pb2.SPEAKER_EMOTION_SAD,
    "angry": speech_pb2.SPEAKER_EMOTION_ANGRY,
    "fearful": speech_pb2.SPEAKER_EMOTION_FEARFUL,
    "surprised": speech_pb2.SPEAKER_EMOTION_SURPRISED,
    "disgusted": speech_pb2.SPEAKER_EMOTION_DISGUSTED,
}
_FROM_WIRE = {value: label for label, value in _TO_WIRE.items()}


@dataclass(frozen=True)
class EmotionReading:
    """What an engine heard. ``label`` is one of SPEAKER_EMOTIONS, or None (not detected); ``confidence`` the
    engine's probability for it (None when it gives none); ``engine`` what listened ("" when nothing could)."""

    label: str | None = None
    confidence: float | None = None
    engine: str = ""

    def __post_init__(self) -> None:
        if self.label is not None and self.label not in _TO_WIRE:
            raise ValueError(f"unknown emotion label {self.label!r}; use one of {', '.join(SPEAKER_EMOTIONS)}")
        if self.confidence is not None and not (math.isfinite(self.confidence) and 0.0 <= self.confidence <= 1.0):
            raise ValueError(f"confidence {self.confidence!r} is not a probability in 0..1")
        if self.label is None and self.confidence is not None:
            raise ValueError("a reading with no emotion has no confidence")

    @property
    def detected(self) -> bool:
        return self.label is not None


NOT_DETECTED = EmotionReading()


def to_message(reading: EmotionReading) -> speech_pb2.DetectedEmotion:
    message = speech_pb2.DetectedEmotion(
        emotion=_TO_WIRE.get(reading.label or "", speech_pb2.SPEAKER_EMOTION_UNSPECIFIED), engine=reading.engine
    )
    if reading.confidence is not None:
        message.confidence = reading.confidence
    return message


def from_message(message: speech_pb2.DetectedEmotion) -> EmotionReading:
    label = _FROM_WIRE.get(message.emotion)
    confidence = message.confidence if label is not None and message.HasField("confidence") else None
    return EmotionReading(label, confidence, message.engine)
