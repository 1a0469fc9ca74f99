"""The ``step-audio`` tokenizer engine: 16 kHz audio in, interleaved vq02/vq06 token groups out.

Streaming policy (one-shot use is ``feed(all)`` + ``finish()``, so both give identical tokens):

- Energy normalisation is causal: audio is cut into 240 ms blocks from the stream start and each
  block is scaled by 0.999 / max(peak of all audio up to the end of that block, 0.01). When the
  loudest sample is in the first 240 ms this equals the reference's whole-clip gain; otherwise
  earlier blocks are scaled up more than in the reference.
- vq02: the Paraformer streaming encoder consumes the normalised blocks as they come; its state
  (frontend, encoder look-back) makes the codes independent of how the audio was cut.
- vq06: fixed windows of ``vq06_window_seconds`` from the stream start, each tokenized when it
  fills; the last partial window at ``finish``. With 30 s windows this is the reference's own
  split; shorter windows give earlier tokens but each window is encoded without context from its
  neighbours (the reference encodes the whole clip up to 30 s in one piece).
- Groups of 2 vq02 + 3 vq06 codes are emitted as soon as both halves exist.

Memory per stream is bounded: < 240 ms of raw audio, one vq06 window, funasr's fixed-size cache,
and at most one window's worth of codes waiting for their partners. With ``trim_silence`` the whole clip
is held until ``finish`` (trimming needs its end), so such a stream is limited to
``TOKENIZER_MAX_AUDIO_SECONDS``, like ``Tokenize``. Audio and codes are buffered in chunk lists
(``buffers.ChunkBuffer``): each sample is copied a constant number of times, however it was cut.
There are no utterances here (no VAD), so ``max_utterance_seconds`` does not apply.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from services.common.errors import EngineUnhealthy, FailedPrecondition, InvalidArgument, ResourceExhausted
from services.common.watchdog import StallWatchdog
from services.tokenizer.engine import (
    EngineCapabilities,
    StreamOptions,
    TokenizerEngine,
    TokenizerEvent,
    TokenizerStream,
    TokensEvent,
)
from services.tokenizer.engines.buffers import ChunkBuffer
from services.tokenizer.engines.step_audio.interleave import GROUP_SECONDS, group_count, interleave
from services.tokenizer.engines.step_audio.layout import require_models_dir
from services.tokenizer.engines.step_audio.preprocess import PEAK_FLOOR, PEAK_TARGET, trim_silence
from services.tokenizer.engines.step_audio.vq02 import STRIDE_SAMPLES, Vq02Encoder
from services.tokenizer.engines.step_audio.vq06 import SAMPLES_PER_TOKEN, Vq06Tokenizer
from services.tokenizer.settings import TokenizerSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NORM_BLOCK = STRIDE_SAMPLES  # 240 ms: the gain changes only at vq02 stride boundaries
_EMPTY = np.zeros(0, dtype=np.float32)


def window_samples(seconds: float) -> int:
    """A vq06 window in samples, a whole number of 40 ms tokens (keeps the 25 Hz grid across windows)."""
    return max(1, round(seconds * SAMPLE_RATE / SAMPLES_PER_TOKEN)) * SAMPLES_PER_TOKEN


class StepAudioStream(TokenizerStream):
    def __init__(self, engine: StepAudioTokenizerEngine, trim_silence: bool = False) -> None:
        self._engine = engine
        self._vq02 = engine.vq02.new_state()
        self._window = window_samples(engine.settings.vq06_window_seconds)
        self._trim = engine.settings.trim_silence or trim_silence  # server setting, or per request
        self._max_trim_samples = round(engine.settings.max_audio_seconds * SAMPLE_RATE)
        self._raw = ChunkBuffer()  # not yet normalised: < NORM_BLOCK samples (or everything, when trimming)
        self._peak = 0.0
        self._vq06_audio = ChunkBuffer()  # normalised samples of the current vq06 window
        self._codes02 = ChunkBuffer(np.int64)  # codes not yet emitted
        self._codes06 = ChunkBuffer(np.int64)
        self._groups = 0  # groups emitted so far
        self._closed = False

    def feed(self, samples: np.ndarray) -> list[TokenizerEvent]:
        self._check_open()
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            raise InvalidArgument("audio contains NaN or infinite samples")
        self._raw.append(samples)
        if self._trim:
            if len(self._raw) > self._max_trim_samples:
                raise InvalidArgument(
                    f"with trim_silence the whole clip is held until the stream ends, and it is over "
                    f"{self._max_trim_samples / SAMPLE_RATE:g} s (TOKENIZER_MAX_AUDIO_SECONDS): send a shorter clip, "
                    "or stream without trim_silence"
                )
            return []  # trimming needs the end of the audio: everything happens at finish
        whole = len(self._raw) // NORM_BLOCK * NORM_BLOCK
        if whole == 0:
            return []
        return self._process(self._normalise(self._raw.take(whole), NORM_BLOCK), final=False)

    def finish(self) -> list[TokenizerEvent]:
        self._check_open()
        raw = self._raw.take(len(self._raw))
        if self._trim:
            raw = trim_silence(raw)
            block = max(len(raw), 1)  # one gain for the whole clip, as the reference
        else:
            block = NORM_BLOCK
        events = self._process(self._normalise(raw, block), final=True)
        if self._groups == 0:
            raise InvalidArgument(
                "audio too short for one token group (2 vq02 + 3 vq06 codes): send at least 0.1 s of speech"
            )
        return events

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for buffer in (self._raw, self._vq06_audio, self._codes02, self._codes06):
                buffer.clear()
            self._vq02 = None  # type: ignore[assignment]
            self._engine.release_stream()

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the tokenizer stream is closed")

    def _normalise(self, raw: np.ndarray, block: int) -> np.ndarray:
        if len(raw) == 0:
            return _EMPTY
        count = -(-len(raw) // block)
        padded = np.zeros(count * block, dtype=np.float32)
        padded[: len(raw)] = np.abs(raw)
        peaks = np.maximum.accumulate(np.maximum(padded.reshape(count, block).max(axis=1), self._peak))
        self._peak = float(peaks[-1])
        gains = (PEAK_TARGET / np.maximum(peaks, PEAK_FLOOR)).astype(np.float32)
        return raw * np.repeat(gains, block)[: len(raw)]

    def _process(self, audio: np.ndarray, final: bool) -> list[TokenizerEvent]:
        engine = self._engine
        with engine.watchdog.working():
            codes02 = engine.vq02.push(self._vq02, audio, final=final)
            engine.watchdog.progress()
            self._vq06_audio.append(audio)
            while len(self._vq06_audio) >= self._window:
                self._codes06.append(engine.vq06.tokens(self._vq06_audio.take(self._window)))
                engine.watchdog.progress()
            if final:
                self._codes06.append(engine.vq06.tokens(self._vq06_audio.take(len(self._vq06_audio))))
        self._codes02.append(codes02)
        return self._emit()

    def _emit(self) -> list[TokenizerEvent]:
        groups = group_count(len(self._codes02), len(self._codes06))
        if groups == 0:
            return []
        ids = interleave(self._codes02.take(2 * groups), self._codes06.take(3 * groups), groups)
        first, self._groups = self._groups, self._groups + groups
        return [TokensEvent(tuple(ids), round(first * GROUP_SECONDS, 6), round(self._groups * GROUP_SECONDS, 6))]

    def state_bytes(self) -> int:
        """Bytes of audio, codes and encoder cache this stream holds (memory-bound tests, benchmarks)."""
        buffers = (self._raw, self._vq06_audio, self._codes02, self._codes06)
        return sum(b.nbytes for b in buffers) + (self._engine.vq02.state_bytes(self._vq02) if self._vq02 else 0)


class StepAudioTokenizerEngine(TokenizerEngine):
    def __init__(self, vq02: Vq02Encoder, vq06: Vq06Tokenizer, settings: TokenizerSettings) -> None:
        self.vq02 = vq02
        self.vq06 = vq06
        self.settings = settings
        self.watchdog = StallWatchdog()
        self._open = 0
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: TokenizerSettings) -> StepAudioTokenizerEngine:
        """Check the whole directory first (ModelsDirError lists every problem), then load."""
        paths = require_models_dir(settings.models_dir)
        codebook = np.load(paths.codebook, allow_pickle=False)
        vq02 = Vq02Encoder(paths.paraformer, codebook)
        vq06 = Vq06Tokenizer(paths.vq06_onnx, settings.onnx_provider)
        log.info("loaded Step-Audio-Tokenizer", extra={"path": str(paths.root), "providers": vq06.providers})
        return cls(vq02, vq06, settings)

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(name="step-audio", supports_tokens=True, supports_transcript=False)

    @property
    def open_streams(self) -> int:
        return self._open

    def open_stream(self, options: StreamOptions) -> StepAudioStream:
        if options.emit_transcript:
            raise FailedPrecondition(
                "the step-audio tokenizer engine produces audio tokens only, no transcript: "
                "ask for emit_tokens alone, or run the tokenizer with TOKENIZER_ENGINE=embedded for transcripts"
            )
        with self._lock:
            if self._open >= self.settings.max_streams:
                raise ResourceExhausted(
                    f"{self._open} tokenizer streams are open (TOKENIZER_MAX_STREAMS={self.settings.max_streams})"
                )
            self._open += 1
        try:
            return StepAudioStream(self, options.trim_silence)
        except BaseException:
            self.release_stream()
            raise

    def release_stream(self) -> None:
        with self._lock:
            self._open -= 1

    async def check_health(self) -> None:
        stalled = self.watchdog.stalled_seconds()
        if stalled > self.settings.engine_stall_seconds:
            raise EngineUnhealthy(
                f"the vq02/vq06 encoders have had audio in hand for {stalled:.0f} s without finishing a step "
                f"(TOKENIZER_ENGINE_STALL_SECONDS={self.settings.engine_stall_seconds:g}): hung",
                recoverable=False,
            )
