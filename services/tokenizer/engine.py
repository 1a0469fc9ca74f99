"""The tokenizer engine interface: audio in (16 kHz float32 mono), events out."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from services.common.emotion import NOT_DETECTED, EmotionReading


@dataclass(frozen=True)
class EngineCapabilities:
    name: str
    supports_tokens: bool
    supports_transcript: bool
    sample_rate_hz: int = 16000


@dataclass(frozen=True)
class StreamOptions:
    emit_tokens: bool
    emit_transcript: bool
    language: str = ""
    # Trim leading/trailing silence first (Step-Audio wav2token, for TTS prompt audio). Engines
    # that produce no tokens ignore it; tokens then come only when the stream finishes.
    trim_silence: bool = False


@dataclass(frozen=True)
class TokensEvent:
    """Step-Audio interleaved ids (65536 + N), a multiple of 5 long."""

    token_ids: tuple[int, ...]
    start_seconds: float
    end_seconds: float


@dataclass(frozen=True)
class TranscriptEvent:
    text: str
    language: str
    start_seconds: float
    end_seconds: float
    is_final: bool = True
    # How the speaker sounds in this segment; NOT_DETECTED unless the engine has an emotion classifier that could tell.
    emotion: EmotionReading = NOT_DETECTED


@dataclass(frozen=True)
class SpeechEvent:
    started: bool  # True: speech started; False: speech ended (endpoint)
    offset_seconds: float


TokenizerEvent = TokensEvent | TranscriptEvent | SpeechEvent


class TokenizerStream(abc.ABC):
    """Per-stream state. Calls on one stream are never concurrent; they may block (the servicer
    runs them on a worker thread)."""

    @abc.abstractmethod
    def feed(self, samples: np.ndarray) -> list[TokenizerEvent]:
        """Consume more audio (float32 mono at the engine rate); return events now known."""

    @abc.abstractmethod
    def finish(self) -> list[TokenizerEvent]:
        """No more audio: flush and return the remaining events."""

    def close(self) -> None:
        """Release per-stream state (called on finish, cancel and disconnect)."""


class TokenizerEngine(abc.ABC):
    @property
    @abc.abstractmethod
    def capabilities(self) -> EngineCapabilities: ...

    @abc.abstractmethod
    def open_stream(self, options: StreamOptions) -> TokenizerStream:
        """Start a stream. Raise FailedPrecondition for outputs the engine cannot produce."""

    async def check_health(self) -> None:
        """Liveness: return if the engine can serve, raise ``EngineUnhealthy`` if not.

        Called every few seconds by the server's health monitor under a deadline (a check that does
        not answer in time counts as failed); it must be cheap and must not block the event loop."""

    async def close(self) -> None:
        """Release models."""


def audio_token_text(token_ids: tuple[int, ...] | list[int]) -> str:
    """The text form Step-Audio LMs read: ``<audio_N>`` with N = id - 65536."""
    return "".join(f"<audio_{token_id - 65536}>" for token_id in token_ids)
