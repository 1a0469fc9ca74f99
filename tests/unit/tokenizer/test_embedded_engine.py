"""The embedded tokenizer (real Silero VAD + whisper-base) on long continuous speech: forced endpoints at
``max_utterance_seconds`` and buffering whose cost grows linearly with the audio."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.tokenizer.engine import SpeechEvent, StreamOptions, TokenizerEvent, TranscriptEvent
from services.tokenizer.engines.embedded import EmbeddedStream, EmbeddedTokenizerEngine
from services.tokenizer.settings import TokenizerSettings

RATE = 16000
TRANSCRIPTS = StreamOptions(emit_tokens=False, emit_transcript=True, language="zh")
EVENTS_ONLY = StreamOptions(emit_tokens=False, emit_transcript=False)
# Long enough that the pauses of the recordings never end an utterance: only the length limit does.
NO_PAUSE_ENDPOINTS = {"vad_min_silence_ms": 10_000}


_ENGINES: dict[tuple, EmbeddedTokenizerEngine] = {}


def stream(options: StreamOptions, **settings: float) -> EmbeddedStream:
    """A stream of an engine loaded with ``settings`` (whisper-base loads in about a second; cached)."""
    key = tuple(sorted(settings.items()))
    if key not in _ENGINES:
        _ENGINES[key] = EmbeddedTokenizerEngine.load(TokenizerSettings(**settings))
    opened = _ENGINES[key].open_stream(options)
    assert isinstance(opened, EmbeddedStream)
    return opened


@pytest.fixture(scope="module")
def speech(recordings: dict[str, np.ndarray]) -> np.ndarray:
    """~33 s of rap: continuous speech, hardly a pause."""
    return np.tile(recordings["TingtingRAP_prompt.wav"], 3)


def run(stream: EmbeddedStream, samples: np.ndarray, chunk: int = 1600) -> list[TokenizerEvent]:
    events: list[TokenizerEvent] = []
    for start in range(0, len(samples), chunk):
        events += stream.feed(samples[start : start + chunk])
    return events + stream.finish()


def utterances(events: list[TokenizerEvent]) -> list[tuple[float, float]]:
    starts = [e.offset_seconds for e in events if isinstance(e, SpeechEvent) and e.started]
    ends = [e.offset_seconds for e in events if isinstance(e, SpeechEvent) and not e.started]
    assert len(starts) == len(ends)
    return list(zip(starts, ends, strict=True))


def test_continuous_speech_gets_forced_endpoints_at_the_limit(speech) -> None:
    events = run(stream(TRANSCRIPTS, max_utterance_seconds=5, **NO_PAUSE_ENDPOINTS), speech)
    spans = utterances(events)
    assert len(spans) >= len(speech) / RATE // 5 - 1  # the speech is cut into pieces of the limit
    assert all(end - start <= 5.0 for start, end in spans)
    at_limit = [span for span in spans if span[1] - span[0] > 5.0 - 0.032]  # the limit in whole 32 ms frames
    assert len(at_limit) >= len(spans) - 1  # all but the last piece were cut at the limit
    transcripts = [e for e in events if isinstance(e, TranscriptEvent)]
    assert len(transcripts) == len(spans)
    assert sum(bool(t.text) for t in transcripts) >= len(transcripts) - 1  # each piece is transcribed
    for transcript, (start, end) in zip(transcripts, spans, strict=True):
        assert transcript.start_seconds <= start and transcript.end_seconds <= end + 0.2 + 1e-6
    # A forced endpoint hands the rest over: no audio is transcribed twice.
    assert all(a.end_seconds <= b.start_seconds + 1e-6 for a, b in itertools.pairwise(transcripts))


def test_without_a_limit_in_reach_the_speech_is_one_utterance(speech) -> None:
    spans = utterances(run(stream(EVENTS_ONLY, max_utterance_seconds=600, **NO_PAUSE_ENDPOINTS), speech))
    assert len(spans) == 1 and spans[0][1] - spans[0][0] > 0.8 * len(speech) / RATE


def test_buffering_cost_is_linear_and_memory_bounded(speech) -> None:
    long_speech = np.tile(speech, 2)  # ~66 s
    for limit in (600, 8):
        tokenizer = stream(EVENTS_ONLY, max_utterance_seconds=limit, **NO_PAUSE_ENDPOINTS)
        held = 0
        for start in range(0, len(long_speech), 512):  # frame by frame, as a live microphone
            tokenizer.feed(long_speech[start : start + 512])
            held = max(held, tokenizer.buffered_samples)
        tokenizer.finish()
        # Each sample is copied into the pending buffer, out as a frame and into the utterance: 3 times.
        # Concatenating onto the utterance per frame would copy ~frames²/2 frames (~1000x the audio here).
        assert tokenizer.copied_samples <= 3 * len(long_speech) + 512
        if limit == 8:
            assert held <= 8 * RATE + TokenizerSettings().vad_padding_ms * RATE // 1000 + 512
