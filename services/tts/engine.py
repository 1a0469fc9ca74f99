"""The TTS engine interface. Engines know nothing of gRPC; the servicer adapts."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from services.common.controls import Controls
from services.common.errors import FailedPrecondition


@dataclass(frozen=True)
class VoiceInfo:
    voice_id: str
    display_name: str
    language_codes: tuple[str, ...]
    native_sample_rate_hz: int
    engine: str
    supported_controls: tuple[str, ...] = ()
    cloned: bool = False  # registered with register_voice (deletable)


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
        controls in ``voice.supported_controls`` (the servicer rejects the rest), except volume
        and pitch, which the servicer applies itself. Closing the iterator must stop the work."""

    async def register_voice(
        self,
        voice_id: str,
        display_name: str,
        wav: bytes,
        transcript: str,
        prompt_tokens: tuple[int, ...],
        language_codes: tuple[str, ...],
    ) -> VoiceInfo:
        """Clone a voice from a prompt recording (``wav``: WAV/FLAC/OGG file bytes) and its
        transcript; ``prompt_tokens`` are its Step-Audio audio tokens (may be empty). Engines that
        clone keep their voices in a :class:`services.tts.voices.VoiceRegistry`, which validates
        (InvalidArgument, AlreadyExists). The new voice must appear in ``voices()``."""
        raise FailedPrecondition(f"the {self.name!r} TTS engine cannot clone voices")

    async def delete_voice(self, voice_id: str) -> None:
        """Delete a cloned voice (NotFound if unknown, FailedPrecondition for a built-in one)."""
        raise FailedPrecondition(f"the {self.name!r} TTS engine cannot clone voices, so it has none to delete")

    async def check_health(self) -> None:
        """Liveness: return if the engine can serve, raise ``EngineUnhealthy`` if not.

        Called every few seconds by the server's health monitor under a deadline (a check that does
        not answer in time counts as failed); it must be cheap and must not block the event loop."""

    async def close(self) -> None:
        """Release models and worker processes."""
