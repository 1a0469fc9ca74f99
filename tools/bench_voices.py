"""Load time, first-chunk latency and real-time factor of each embedded voice, through the engine.

python -m tools.bench_voices
"""

from __future__ import annotations

import asyncio
import time

from services.tts.engine import Controls
from services.tts.engines import create_engine
from services.tts.settings import TtsSettings

TEXTS = {
    "en-joe": "The weather is lovely today. Let's take a walk in the park. We can bring some sandwiches. "
    "Afterwards, we might visit the museum.",
    "zh-baker": "今天天气很好，我们去公园散步吧。可以带一些三明治。"
    "之后我们还可以去参观博物馆。博物馆里有很多有趣的展品。",
    "ja-mei": "今日はいい天気ですね。公園を散歩しましょう。サンドイッチを持っていきましょう。"
    "そのあと、博物館に行くのもいいですね。",
}


async def measure() -> None:
    started = time.perf_counter()
    engine = await asyncio.to_thread(create_engine, TtsSettings())
    print(f"engine load (all voice workers, in parallel): {time.perf_counter() - started:.2f} s")
    try:
        voices = {voice.voice_id: voice for voice in engine.voices()}
        for voice_id, text in TEXTS.items():
            voice = voices[voice_id]
            [_ async for _ in engine.synthesize("Warm up.", voice, Controls())]
            started = time.perf_counter()
            first = 0.0
            samples = 0
            async for chunk in engine.synthesize(text, voice, Controls()):
                first = first or time.perf_counter() - started
                samples += len(chunk.samples)
            elapsed = time.perf_counter() - started
            audio = samples / voice.native_sample_rate_hz
            print(
                f"{voice_id:<9} first chunk {first:.2f} s, {audio:.1f} s of audio in {elapsed:.2f} s, "
                f"RTF {elapsed / audio:.3f}"
            )
    finally:
        await engine.close()


if __name__ == "__main__":
    asyncio.run(measure())
