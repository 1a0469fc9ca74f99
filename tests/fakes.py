"""Fake engines for servicer tests. They are fakes: no models, deterministic, observable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from services.chat.engine import ChatEngine, EngineInfo, Message, Sampling, Usage
from services.common.controls import Controls
from services.common.errors import FailedPrecondition
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
from services.tts.engine import PcmChunk, TtsEngine, VoiceInfo


class FakeTokenizerStream(TokenizerStream):
    """Non-zero samples are speech, an all-zero chunk after speech is an endpoint. Each utterance's
    transcript is "heard N samples" (N = its length); 5 tokens per 0.12 s of audio."""

    def __init__(self, engine: FakeTokenizerEngine, options: StreamOptions) -> None:
        self.engine = engine
        self.options = options
        self.samples = 0
        self.utterance = 0
        self.in_speech = False

    def feed(self, samples: np.ndarray) -> list[TokenizerEvent]:
        events: list[TokenizerEvent] = []
        if not len(samples):
            return events
        if np.any(samples):
            if not self.in_speech:
                self.in_speech = True
                events.append(SpeechEvent(True, self.samples / 16000))
            self.utterance += len(samples)
        elif self.in_speech:
            events += self._endpoint()
        before = self.samples // 1920
        self.samples += len(samples)
        if self.options.emit_tokens:
            for group in range(before, self.samples // 1920):
                ids = tuple(65536 + group % 1024 + k for k in range(2)) + tuple(65536 + 1024 + k for k in range(3))
                events.append(TokensEvent(ids, group * 0.12, (group + 1) * 0.12))
        return events

    def _endpoint(self) -> list[TokenizerEvent]:
        events: list[TokenizerEvent] = [SpeechEvent(False, self.samples / 16000)]
        if self.options.emit_transcript:
            events.append(TranscriptEvent(f"heard {self.utterance} samples", "en", 0.0, self.samples / 16000))
        self.in_speech = False
        self.utterance = 0
        return events

    def finish(self) -> list[TokenizerEvent]:
        return self._endpoint() if self.in_speech else []

    def close(self) -> None:
        self.engine.closed_streams += 1


class FakeTokenizerEngine(TokenizerEngine):
    def __init__(self, supports_tokens: bool = True) -> None:
        self.supports_tokens = supports_tokens
        self.closed_streams = 0

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities("fake", self.supports_tokens, True)

    def open_stream(self, options: StreamOptions) -> TokenizerStream:
        if options.emit_tokens and not self.supports_tokens:
            raise FailedPrecondition("fake engine without tokens")
        return FakeTokenizerStream(self, options)


class FakeChatEngine(ChatEngine):
    """Replies with ``reply`` word by word. If ``hold`` is set, it waits for ``release`` after
    the first ``hold`` deltas (to observe pipelining). Records requests and closed streams."""

    def __init__(self, reply: str = "Hello there. How are you today? I am fine.", hold: int = 0) -> None:
        self.reply = reply
        self.hold = hold
        self.release = asyncio.Event()
        self.requests: list[tuple[list[Message], Sampling]] = []
        self.closed = 0
        self.finished = 0

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("fake", "fake-model", False, 1024, Sampling(0.7, 0.9, 50, 64, 1.0))

    async def _deltas(self, usage: Usage) -> AsyncIterator[str]:
        try:
            words = self.reply.split(" ")
            for index, word in enumerate(words):
                if self.hold and index == self.hold:
                    await self.release.wait()
                usage.completion_tokens += 1
                yield word if index == 0 else " " + word
                await asyncio.sleep(0)
            usage.finish_reason = "stop"
            self.finished += 1
        finally:
            self.closed += 1

    def generate(self, messages: list[Message], sampling: Sampling, usage: Usage) -> AsyncIterator[str]:
        self.requests.append((messages, sampling))
        usage.prompt_tokens = sum(len(m.text.split()) for m in messages)
        return self._deltas(usage)


class FakeTtsEngine(TtsEngine):
    """A 440 Hz tone, 0.01 s per character, in one chunk per call; records texts and voices."""

    name = "fake"

    def __init__(self) -> None:
        self.texts: list[tuple[str, str, Controls]] = []
        self.extra_voices: tuple[str, ...] = ()  # more voice ids (16 kHz, no controls), e.g. "fake-ja"

    def voices(self) -> list[VoiceInfo]:
        return [
            VoiceInfo("fake-en", "Fake English", ("en-US",), 16000, "fake", ("speed", "volume", "pitch")),
            VoiceInfo("fake-zh", "Fake Mandarin", ("zh-CN",), 24000, "fake", ("volume",)),
            *(VoiceInfo(voice_id, voice_id, ("ja-JP",), 16000, "fake", ()) for voice_id in self.extra_voices),
        ]

    @property
    def default_voice_id(self) -> str:
        return "fake-en"

    async def synthesize(self, text: str, voice: VoiceInfo, controls: Controls) -> AsyncIterator[PcmChunk]:
        self.texts.append((text, voice.voice_id, controls))
        rate = voice.native_sample_rate_hz
        count = int(0.01 * len(text) * rate / controls.speed)
        tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(count) / rate).astype(np.float32)
        yield PcmChunk(tone, rate)


class FakeCloningTtsEngine(TtsEngine):
    """A fake engine that CLONES voices, backed by a real ``services.tts.voices.VoiceRegistry``.

    Synthesis is a tone (0.01 s per character at 16 kHz) but goes through the real tag
    composition (``services.tts.tags.compose``) and speed post-processing, and records what a
    Step-Audio engine would feed its LM: ``self.calls`` holds ``(composed_text, VoicePrompt)``
    (the music variant when the style or the first tag asks for RAP/humming)."""

    name = "fake-cloning"
    CONTROLS = ("emotion", "language", "style", "speed", "volume")

    def __init__(self, registry) -> None:  # registry: services.tts.voices.VoiceRegistry
        self.registry = registry
        self.calls: list[tuple[str, object]] = []

    def _info(self, prompt) -> VoiceInfo:
        return VoiceInfo(
            prompt.voice_id,
            prompt.display_name,
            prompt.language_codes,
            16000,
            self.name,
            self.CONTROLS,
            cloned=not prompt.builtin,
        )

    def voices(self) -> list[VoiceInfo]:
        return [self._info(prompt) for prompt in self.registry.list()]

    @property
    def default_voice_id(self) -> str:
        return self.registry.list()[0].voice_id

    async def synthesize(self, text: str, voice: VoiceInfo, controls: Controls) -> AsyncIterator[PcmChunk]:
        from services.tts import postprocess, tags

        composed = tags.compose(text, controls)
        prompt = self.registry.get(voice.voice_id)
        style = controls.style or tags.music_style(tags.split_leading_tag(composed)[0])
        prompt = prompt.music.get(style, prompt) if style else prompt
        self.calls.append((composed, prompt))
        count = int(0.01 * len(text) * 16000)
        tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(count) / 16000).astype(np.float32)
        yield PcmChunk(postprocess.change_speed(tone, 16000, controls.speed), 16000)

    async def register_voice(self, voice_id, display_name, wav, transcript, prompt_tokens, language_codes) -> VoiceInfo:
        from services.common.concurrency import run_blocking

        prompt = await run_blocking(
            self.registry.register, voice_id, display_name, wav, transcript, prompt_tokens, language_codes
        )
        return self._info(prompt)

    async def delete_voice(self, voice_id: str) -> None:
        from services.common.concurrency import run_blocking

        await run_blocking(self.registry.delete, voice_id)
