"""The ``synthetic`` tokenizer engine: an energy VAD, made-up transcripts and Step-Audio-shaped tokens, no model.

For benchmarks and fault tests of the serving stack (docs/synthetic.md). Everything is a function of the audio:

- VAD: 20 ms frames; a frame whose RMS exceeds ``synthetic_rms_threshold`` is speech. Speech starts at the first
  speech frame and ends after ``synthetic_endpoint_seconds`` of silence (the endpoint), when it has lasted
  ``max_utterance_seconds`` (a forced endpoint, as the embedded engine's), or when the stream finishes.
- Transcript, at each endpoint: ``utterance N of D s`` (D: speech length, two decimals); with a ``zh`` language hint
  ``第N句，D秒``.
- Tokens: one group of 2 vq02 + 3 vq06 ids (65536 + N, the Step-Audio layout) per complete 120 ms of audio, speech
  or not, i.e. 25 vq06 tokens a second as the real tokenizer; the codes depend on the group's position and level.
  ``trim_silence`` is ignored.

Per-stream state is a few counters and under 20 ms of audio, whatever the stream's length.
"""

from __future__ import annotations

import time

import numpy as np

from services.common.synthetic import check_health_switch
from services.tokenizer.engine import (
    EngineCapabilities,
    SpeechEvent,
    StreamOptions,
    TokenizerEngine,
    TokenizerEvent,
    TokenizerStream,
    TokensEvent,
    TranscriptEvent,
)
from services.tokenizer.settings import TokenizerSettings

SAMPLE_RATE = 16000
FRAME = 320  # 20 ms
FRAMES_PER_GROUP = 6  # 120 ms: 2 vq02 (16.7 Hz) + 3 vq06 (25 Hz) codes
GROUP_SECONDS = FRAME * FRAMES_PER_GROUP / SAMPLE_RATE
AUDIO_BASE = 65536
VQ06_BASE = AUDIO_BASE + 1024


def group_ids(index: int, level: int) -> tuple[int, ...]:
    """The 5 ids of group ``index`` whose audio had loudness ``level`` (0..99)."""
    vq02 = [AUDIO_BASE + (2 * index + k + 31 * level) % 1024 for k in range(2)]
    vq06 = [VQ06_BASE + (3 * index + k + 97 * level) % 4096 for k in range(3)]
    return (*vq02, *vq06)


def transcript_text(number: int, seconds: float, language: str) -> tuple[str, str]:
    """(text, language) of utterance ``number`` lasting ``seconds``."""
    if language.lower().startswith("zh"):
        return f"第{number}句，{seconds:.2f}秒", "zh"
    return f"utterance {number} of {seconds:.2f} s", "en"


class SyntheticStream(TokenizerStream):
    def __init__(self, settings: TokenizerSettings, options: StreamOptions) -> None:
        self._options = options
        self._threshold = settings.synthetic_rms_threshold
        self._real_time_factor = settings.synthetic_real_time_factor
        self._endpoint_frames = max(1, round(settings.synthetic_endpoint_seconds * SAMPLE_RATE / FRAME))
        self._max_utterance_frames = max(1, round(settings.max_utterance_seconds * SAMPLE_RATE / FRAME))
        self._pending = np.zeros(0, dtype=np.float32)  # < one frame not yet judged
        self._frames = 0  # frames judged so far
        self._speech_start: int | None = None  # frame index where the current utterance began
        self._last_speech = 0  # frame index after the last speech frame
        self._utterances = 0
        self._group_energy = 0.0  # sum of squares of the current (incomplete) token group

    def feed(self, samples: np.ndarray) -> list[TokenizerEvent]:
        if self._real_time_factor:  # engines run on a worker thread: sleeping here is the engine being busy
            time.sleep(len(samples) / SAMPLE_RATE * self._real_time_factor)
        audio = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        whole = len(audio) // FRAME
        self._pending = audio[whole * FRAME :]
        frames = audio[: whole * FRAME].reshape(whole, FRAME).astype(np.float64)
        energies = np.square(frames).sum(axis=1)
        rms = np.sqrt(energies / FRAME)
        events: list[TokenizerEvent] = []
        token_ids: list[int] = []
        first_group = self._frames // FRAMES_PER_GROUP
        for energy, loudness in zip(energies.tolist(), rms.tolist(), strict=True):
            events.extend(self._judge(loudness > self._threshold))
            token_ids.extend(self._count_tokens(energy))
        if token_ids and self._options.emit_tokens:
            groups = len(token_ids) // 5
            events.append(
                TokensEvent(tuple(token_ids), first_group * GROUP_SECONDS, (first_group + groups) * GROUP_SECONDS)
            )
        return events

    def finish(self) -> list[TokenizerEvent]:
        """A partial last frame counts as a frame for the VAD; a partial token group is dropped."""
        events: list[TokenizerEvent] = []
        if len(self._pending):
            loudness = float(np.sqrt(np.mean(np.square(self._pending, dtype=np.float64))))
            self._pending = np.zeros(0, dtype=np.float32)
            events.extend(self._judge(loudness > self._threshold))
        if self._speech_start is not None:
            events.extend(self._endpoint())
        return events

    def _judge(self, speech: bool) -> list[TokenizerEvent]:
        frame = self._frames
        self._frames += 1
        if speech:
            self._last_speech = self._frames
            if self._speech_start is None:
                self._speech_start = frame
                return [SpeechEvent(True, frame * FRAME / SAMPLE_RATE)]
            if self._frames - self._speech_start >= self._max_utterance_frames:
                return self._endpoint()  # forced: the speech that follows starts a new utterance
        elif self._speech_start is not None and self._frames - self._last_speech >= self._endpoint_frames:
            return self._endpoint()
        return []

    def _endpoint(self) -> list[TokenizerEvent]:
        assert self._speech_start is not None
        start, end = self._speech_start * FRAME / SAMPLE_RATE, self._last_speech * FRAME / SAMPLE_RATE
        self._speech_start = None
        self._utterances += 1
        events: list[TokenizerEvent] = [SpeechEvent(False, end)]
        if self._options.emit_transcript:
            text, language = transcript_text(self._utterances, end - start, self._options.language)
            events.append(TranscriptEvent(text, language, start, end))
        return events

    def _count_tokens(self, energy: float) -> tuple[int, ...]:
        """Adds a judged frame to the current token group; the group's ids once it is complete."""
        self._group_energy += energy
        if self._frames % FRAMES_PER_GROUP:
            return ()
        rms = (self._group_energy / (FRAME * FRAMES_PER_GROUP)) ** 0.5
        self._group_energy = 0.0
        return group_ids(self._frames // FRAMES_PER_GROUP - 1, min(99, int(rms * 100)))

    def close(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)


class SyntheticTokenizerEngine(TokenizerEngine):
    def __init__(self, settings: TokenizerSettings) -> None:
        self._settings = settings

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(name="synthetic", supports_tokens=True, supports_transcript=True)

    def open_stream(self, options: StreamOptions) -> TokenizerStream:
        return SyntheticStream(self._settings, options)

    async def check_health(self) -> None:
        await check_health_switch(self._settings.synthetic_fail_health_file, "tokenizer")
