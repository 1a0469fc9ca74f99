"""The TTS engine interface. Engines know nothing of gRPC; the servicer adapts."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from services.common.controls import Controls


@dataclass(frozen=True)
class VoiceInfo:
    voice_id: str
    display_name: str
    language_codes: tuple[str, ...]
    native_sample_rate_hz: int
    engine: str
    supported_controls: tuple[str, ...] = ()


@dataclass
class PcmChunk:
    """Mono float32 samples in [-1, 1] at ``sample_rate_hz``."""

    samples: np.ndarray
    sample_rate_hz: int
    extra: dict = field(default_factory=dict)


class TtsEngine(abc.ABC):
    """Synthesises text with a voice, as a stream of PCM chunks."""

    name: str

    @abc.abstractmethod
    def voices(self) -> list[VoiceInfo]:
        """All voices this engine serves."""

    @property
    @abc.abstractmethod
    def default_voice_id(self) -> str:
        """Voice used when a request names none."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: VoiceInfo, controls: Controls) -> AsyncIterator[PcmChunk]:
        """Stream audio for ``text``. ``voice`` comes from ``voices()``; ``controls`` only names
        controls in ``voice.supported_controls`` (the servicer rejects the rest), except volume,
        which the servicer applies itself. Closing the iterator must stop the work."""

    async def close(self) -> None:
        """Release models and worker processes."""
