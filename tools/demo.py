"""The CPU demo: four services as separate processes, a spoken question, a Chinese and a Japanese
text question in one session, spoken replies (each in a voice of its language) written as WAV files
and checked by transcribing them back, then the gateway's latency metrics. Run with ``make demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.request
from pathlib import Path

from stepaudio.common.v1 import speech_pb2
from stepaudio_client.cli import write_wav
from stepaudio_client.client import GatewayClient, TurnResult, pcm16_audio, wav_audio

from services.gateway.clauses import reply_language
from tools.cluster import ROOT, LocalCluster, shared_data_dir
from tools.speech_check import character_error_rate, speakable_reference

RECORDING = shared_data_dir() / "Tingting_prompt.wav"
ENGLISH_QUESTION = "What is the tallest mountain in the world?"
CHINESE_QUESTION = "请用一句话介绍一下长城。"
JAPANESE_QUESTION = "日本で一番高い山は何ですか？日本語で一文で答えてください。"
MAX_CER = 0.35
# Seeded and cooler than the default so the demo is repeatable.
SAMPLING = speech_pb2.SamplingParams(temperature=0.3, seed=7)
METRICS = (
    "stepaudio_gateway_time_to_first_audio_seconds",
    "stepaudio_gateway_chat_time_to_first_token_seconds",
    "stepaudio_gateway_tts_first_chunk_seconds",
)


def histogram_summary(metrics_text: str, name: str) -> tuple[float, float]:
    values = {}
    for line in metrics_text.splitlines():
        for suffix in ("_count", "_sum"):
            if line.startswith(name + suffix + " "):
                values[suffix] = float(line.split()[-1])
    return values.get("_count", 0.0), values.get("_sum", 0.0)


async def spoken_question(client: GatewayClient) -> tuple[str, bytes]:
    """The real Step-Audio recording when the shared data is there; else a question spoken now."""
    if RECORDING.exists():
        return f"recording {RECORDING.name}", RECORDING.read_bytes()
    pcm = bytearray()
    rate = 0
    async for chunk in client.synthesize(ENGLISH_QUESTION, voice_id="en-joe"):
        pcm += chunk.content
        rate = chunk.format.sample_rate_hz
    path = ROOT / "demo-output" / "question.wav"
    write_wav(path, bytes(pcm), rate)
    return f"synthesised question {path.name}", path.read_bytes()


async def check_reply(client: GatewayClient, turn: TurnResult, path: Path) -> float:
    write_wav(path, bytes(turn.pcm), turn.sample_rate_hz)
    back = await client.transcribe(pcm16_audio(bytes(turn.pcm), turn.sample_rate_hz))
    cer = character_error_rate(speakable_reference(turn.reply_text), back.transcript.text)
    print(f"  reply audio   : {path.relative_to(ROOT)} ({len(turn.pcm) / 2 / turn.sample_rate_hz:.1f} s)")
    print(f"  heard back    : {back.transcript.text}")
    print(f"  intelligibility: character error rate {cer:.2f} (limit {MAX_CER})")
    return cer


async def conversation(address: str, metrics_url: str) -> int:
    out = ROOT / "demo-output"
    out.mkdir(exist_ok=True)
    failures = 0
    async with GatewayClient(address) as client:
        session = await client.create_session()
        source, question = await spoken_question(client)
        turns = [
            (f"spoken question ({source})", {"audio": wav_audio(question)}),
            ("Chinese text question", {"text": CHINESE_QUESTION}),
            ("Japanese text question", {"text": JAPANESE_QUESTION}),
        ]
        for number, (label, inputs) in enumerate(turns, 1):
            print(f"\nturn {number}: {label}")
            turn = await client.chat(session_id=session.session_id, timeout=300, sampling=SAMPLING, **inputs)
            assert turn.summary is not None
            if turn.user_transcript:
                print(f"  you said      : {turn.user_transcript}")
            else:
                print(f"  you wrote     : {inputs['text']}")
            print(f"  reply         : {turn.reply_text}")
            latency = turn.summary.latency
            print(
                f"  latency       : first text {latency.first_text_seconds:.2f} s, "
                f"first audio {latency.first_audio_seconds:.2f} s, total {latency.total_seconds:.2f} s"
            )
            if not turn.pcm:
                print("  FAIL: no reply audio")
                failures += 1
                continue
            if inputs.get("text") == JAPANESE_QUESTION and reply_language(turn.reply_text) != "ja":
                print("  FAIL: the reply to the Japanese question is not Japanese")
                failures += 1
            if await check_reply(client, turn, out / f"turn{number}.wav") > MAX_CER:
                print("  FAIL: the reply audio does not say the reply text")
                failures += 1
    metrics_text = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics_url, timeout=5).read().decode())
    print(f"\ngateway metrics ({metrics_url}):")
    for name in METRICS:
        count, total = histogram_summary(metrics_text, name)
        mean = total / count if count else 0.0
        print(f"  {name}: {count:.0f} observations, mean {mean:.2f} s")
        failures += count == 0
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", help="use a running gateway (make up) instead of starting one")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:9091/metrics")
    args = parser.parse_args()
    if args.address:
        return 1 if asyncio.run(conversation(args.address, args.metrics_url)) else 0

    cluster = LocalCluster(ROOT / ".run" / "demo")
    print("starting tokenizer, chat and tts, then the gateway, as separate processes...")
    cluster.start()
    try:
        for name, service in cluster.services.items():
            print(f"  {name:<10} pid {service.process.pid:<7} grpc {service.address}")
        metrics_url = f"http://127.0.0.1:{cluster.services['gateway'].metrics_port}/metrics"
        failures = asyncio.run(conversation(cluster.gateway_address, metrics_url))
    finally:
        codes = cluster.stop()
        print(f"\nstopped (exit codes: {codes})")
    print("demo passed" if not failures else f"demo FAILED ({failures} checks)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
