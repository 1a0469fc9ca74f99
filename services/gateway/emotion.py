"""What the gateway does with the user's detected emotion: the note that tells the chat model, the empathetic reply's
emotion control, and the parsing of the chat model's own reading of the audio (step-audio profile).

A reading is used only when it holds an emotion and, where the engine gives a confidence, that confidence reaches
the gateway's minimum; otherwise the turn goes on as if nothing was detected. Nothing here guesses: the chat model's
answer counts only when it is exactly one of the label words.
"""

from __future__ import annotations

import re
import unicodedata

from stepaudio.common.v1 import speech_pb2

from services.common.emotion import EmotionReading

# The reply's emotion control in the empathetic mode, by the user's emotion. The Step-Audio voices know happy, sad,
# angry and coquettish (services/common/controls.py): joy is shared, sadness met with a sad (soft, sympathetic)
# delivery, and anger, fear, disgust, surprise and calm with the voice's neutral delivery (never anger for anger).
EMPATHETIC_REPLY = {
    "neutral": speech_pb2.EMOTION_UNSPECIFIED,
    "happy": speech_pb2.EMOTION_HAPPY,
    "sad": speech_pb2.EMOTION_SAD,
    "angry": speech_pb2.EMOTION_UNSPECIFIED,
    "fearful": speech_pb2.EMOTION_UNSPECIFIED,
    "surprised": speech_pb2.EMOTION_UNSPECIFIED,
    "disgusted": speech_pb2.EMOTION_UNSPECIFIED,
}

# Words the chat model may answer with, per label (English as the prompt asks, Chinese as the model may answer).
_LABEL_WORDS = {
    "neutral": ("neutral", "calm", "中性", "平静"),
    "happy": ("happy", "高兴", "开心", "快乐"),
    "sad": ("sad", "悲伤", "伤心", "难过"),
    "angry": ("angry", "生气", "愤怒"),
    "fearful": ("fearful", "afraid", "scared", "害怕", "恐惧"),
    "surprised": ("surprised", "惊讶", "吃惊"),
    "disgusted": ("disgusted", "厌恶", "恶心"),
}
_WORD_LABELS = {word: label for label, words in _LABEL_WORDS.items() for word in words}


def usable(reading: EmotionReading, min_confidence: float) -> bool:
    """Whether a reading is firm enough to act on (tell the chat model, choose the reply's emotion)."""
    return reading.detected and (reading.confidence is None or reading.confidence >= min_confidence)


def context_note(template: str, reading: EmotionReading, min_confidence: float) -> str:
    """The line added to the chat prompt's system message; "" when there is nothing to say or no template."""
    if not template or not usable(reading, min_confidence):
        return ""
    return template.replace("{emotion}", reading.label or "")


def empathetic_emotion(reading: EmotionReading, min_confidence: float) -> int | None:
    """The reply's ``Emotion`` for the user's emotion; None when the reading is not usable (keep the request's)."""
    return EMPATHETIC_REPLY[reading.label] if reading.label and usable(reading, min_confidence) else None


def parse_chat_reading(answer: str, engine: str) -> EmotionReading:
    """The chat model's answer to the emotion question, as a reading. Only an answer that is exactly one label word
    (case, spaces, quotes and punctuation aside) counts; anything else ("unknown", a sentence, two labels, "不高兴")
    is not detected. A chat model gives no probability, so the reading has no confidence."""
    word = "".join(ch for ch in unicodedata.normalize("NFKC", answer) if not _is_punctuation_or_space(ch)).lower()
    label = _WORD_LABELS.get(word)
    return EmotionReading(label, None, engine) if label else EmotionReading(None, None, engine)


def _is_punctuation_or_space(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P") or ch in "`'\"*"


_TEMPLATE_FIELD = re.compile(r"\{(\w*)\}")


def check_context_template(template: str) -> str:
    """A context template may name only ``{emotion}``."""
    unknown = sorted({name for name in _TEMPLATE_FIELD.findall(template) if name != "emotion"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join('{' + name + '}' for name in unknown)}: use {{emotion}}")
    return template
