"""Conversions between protobuf messages and the plain types engines use."""

from __future__ import annotations

import numpy as np
from stepaudio.common.v1 import audio_pb2, speech_pb2

from services.common.audio import DeclaredFormat, to_pcm16
from services.common.emotion import NOT_DETECTED, EmotionReading, to_message

_ENCODINGS = {
    audio_pb2.AUDIO_ENCODING_UNSPECIFIED: "",
    audio_pb2.AUDIO_ENCODING_PCM16: "pcm16",
    audio_pb2.AUDIO_ENCODING_WAV: "wav",
}


def declared_format(fmt: audio_pb2.AudioFormat) -> DeclaredFormat:
    return DeclaredFormat(_ENCODINGS.get(fmt.encoding, "?"), fmt.sample_rate_hz, fmt.channels)


def pcm16_format(sample_rate_hz: int) -> audio_pb2.AudioFormat:
    return audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=sample_rate_hz, channels=1)


def audio_chunk(
    samples: np.ndarray, sample_rate_hz: int, sequence_number: int, offset_seconds: float
) -> audio_pb2.AudioChunk:
    return audio_pb2.AudioChunk(
        format=pcm16_format(sample_rate_hz),
        content=to_pcm16(samples),
        sequence_number=sequence_number,
        offset_seconds=offset_seconds,
    )


def transcript_message(
    text: str,
    language: str,
    start: float,
    end: float,
    is_final: bool = True,
    emotion: EmotionReading = NOT_DETECTED,
) -> speech_pb2.Transcript:
    return speech_pb2.Transcript(
        text=text,
        language=language,
        start_seconds=start,
        end_seconds=end,
        is_final=is_final,
        emotion=to_message(emotion),
    )
