"""The ``synthetic`` TTS engine: a deterministic chirp per text, streamed at a set pace, no model.

For benchmarks and fault tests of the serving stack (docs/synthetic.md).

- Voices: ``synthetic-en`` (en-US, 16 kHz) and ``synthetic-zh`` (zh-CN, 24 kHz), plus voices cloned with
  RegisterVoice, kept in the crash-safe registry of ``TTS_REGISTRY_DIR`` (16 kHz, any prompt; the prompt only
  seeds the pitch through the voice id). Controls: speed, volume and pitch (the last two applied by the servicer).
- Audio: a rising chirp (from 150-350 Hz, picked from the voice and text, up by half) at 0.3 of full scale, with
  10 ms fades; its length is 65 ms per letter or digit and 200 ms per Chinese character (at least 0.2 s),
  divided by the speed.
- Pace: the first chunk of ``synthetic_chunk_seconds`` after ``synthetic_first_chunk_seconds``, each further one
  after its length times ``synthetic_real_time_factor``; asyncio sleeps, so any number of syntheses stream at once.
  Closing the stream stops it at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from services.common.concurrency import run_blocking
from services.common.controls import Controls
from services.common.errors import AlreadyExists, FailedPrecondition
from services.common.synthetic import check_health_switch, stable_seed
from services.tts.engine import PcmChunk, TtsEngine, VoiceInfo
from services.tts.settings import TtsSettings
from services.tts.voices import VoicePrompt, VoiceRegistry

NAME = "synthetic"
CONTROLS = ("speed", "volume", "pitch")
CLONED_SAMPLE_RATE = 16000
BUILTIN_VOICES = (
    VoiceInfo("synthetic-en", "Synthetic English (tone)", ("en-US",), 16000, NAME, CONTROLS),
    VoiceInfo("synthetic-zh", "Synthetic Mandarin (tone)", ("zh-CN",), 24000, NAME, CONTROLS),
)
SECONDS_PER_CHARACTER = 0.065
SECONDS_PER_CJK_CHARACTER = 0.2
MIN_SECONDS = 0.2
AMPLITUDE = 0.3
FADE_SECONDS = 0.01
_CJK = re.compile(r"[\u3400-\u9fff]")
_WORD_CHARACTER = re.compile(r"\w")


def speech_seconds(text: str, speed: float = 1.0) -> float:
    """How long the synthetic voice takes to say ``text``."""
    cjk = len(_CJK.findall(text))
    others = len(_WORD_CHARACTER.findall(text)) - cjk
    return max(MIN_SECONDS, others * SECONDS_PER_CHARACTER + cjk * SECONDS_PER_CJK_CHARACTER) / speed


class Chirp:
    """Samples ``[start, end)`` of the chirp for one text, computed piece by piece (memory: one chunk)."""

    def __init__(self, voice_id: str, text: str, seconds: float, rate: int) -> None:
        self.rate = rate
        self.total = max(1, round(seconds * rate))
        self._low = 150.0 + stable_seed(voice_id, text) % 200
        self._half_sweep = self._low / 4 / (self.total / rate)  # up by half over the utterance: f = low + 2·half·t
        self._fade = max(1, round(FADE_SECONDS * rate))

    def samples(self, start: int, end: int) -> np.ndarray:
        t = np.arange(start, end, dtype=np.float64) * (1.0 / self.rate)
        cycles = t * (self._low + self._half_sweep * t)
        cycles -= np.floor(cycles)  # the phase within its cycle: float32 from here on keeps it exact and cheap
        wave = np.sin(cycles.astype(np.float32) * np.float32(2 * np.pi))
        wave *= np.float32(AMPLITUDE)
        if start < self._fade or end > self.total - self._fade:
            index = np.arange(start, end)
            wave *= np.minimum(1.0, np.minimum(index + 1, self.total - index) / self._fade).astype(np.float32)
        return wave


class SyntheticTtsEngine(TtsEngine):
    name = NAME

    def __init__(self, settings: TtsSettings, registry: VoiceRegistry) -> None:
        self._settings = settings
        self._registry = registry
        self._builtin = {voice.voice_id: voice for voice in BUILTIN_VOICES}
        self.active_syntheses = 0  # streams generating now (tests: closing a stream ends its work)

    @classmethod
    def load(cls, settings: TtsSettings) -> SyntheticTtsEngine:
        registry = VoiceRegistry.open(
            None,
            Path(settings.registry_dir),
            max_voices=settings.max_cloned_voices,
            max_bytes=settings.max_cloned_voice_bytes,
        )
        return cls(settings, registry)

    # --- voices ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _cloned_info(voice: VoicePrompt) -> VoiceInfo:
        return VoiceInfo(
            voice.voice_id, voice.display_name, voice.language_codes, CLONED_SAMPLE_RATE, NAME, CONTROLS, cloned=True
        )

    def voices(self) -> list[VoiceInfo]:
        return [*BUILTIN_VOICES, *(self._cloned_info(voice) for voice in self._registry.list())]

    @property
    def default_voice_id(self) -> str:
        return BUILTIN_VOICES[0].voice_id

    async def register_voice(
        self,
        voice_id: str,
        display_name: str,
        wav: bytes,
        transcript: str,
        prompt_tokens: tuple[int, ...],
        language_codes: tuple[str, ...],
    ) -> VoiceInfo:
        taken = {key.casefold(): key for key in self._builtin}
        if voice_id.casefold() in taken:
            raise AlreadyExists(f"voice id {voice_id!r} is taken by a built-in voice ({taken[voice_id.casefold()]!r})")
        voice = await run_blocking(
            self._registry.register, voice_id, display_name, wav, transcript, prompt_tokens, language_codes
        )
        return self._cloned_info(voice)

    async def delete_voice(self, voice_id: str) -> None:
        if voice_id in self._builtin:
            raise FailedPrecondition(f"voice {voice_id!r} is built in and cannot be deleted")
        await run_blocking(self._registry.delete, voice_id)

    # --- synthesis ------------------------------------------------------------------------------------------------

    async def synthesize(self, text: str, voice: VoiceInfo, controls: Controls) -> AsyncIterator[PcmChunk]:
        if voice.voice_id not in self._builtin:
            self._registry.get(voice.voice_id)  # NotFound for a voice deleted meanwhile
        rate = voice.native_sample_rate_hz
        chirp = Chirp(voice.voice_id, text, speech_seconds(text, controls.speed), rate)
        step = max(1, round(self._settings.synthetic_chunk_seconds * rate))
        seconds_per_chunk = step / rate * self._settings.synthetic_real_time_factor
        self.active_syntheses += 1
        try:
            loop = asyncio.get_running_loop()
            first = loop.time() + self._settings.synthetic_first_chunk_seconds
            for number, start in enumerate(range(0, chirp.total, step)):
                # A fixed schedule: a slow reader delays chunks, but the pace does not drift.
                await asyncio.sleep(max(0.0, first + number * seconds_per_chunk - loop.time()))
                yield PcmChunk(chirp.samples(start, min(start + step, chirp.total)), rate)
        finally:
            self.active_syntheses -= 1

    async def check_health(self) -> None:
        await check_health_switch(self._settings.synthetic_fail_health_file, "tts")
