"""Time to first audio: the pipelined gateway against the reference release's sequential flow.

The reference (Step-Audio's demo) generates the whole LLM reply, then synthesises the whole
reply, then returns the audio. The gateway streams the reply, cuts clauses and synthesises them
while the LLM is still writing. Both flows run here against the same service processes, models,
questions and greedy sampling, interleaved (A, B, A, B...) so machine noise hits both alike.

    python -m tools.bench [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import grpc
from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc
from stepaudio.common.v1 import speech_pb2
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc
from stepaudio_client.client import GatewayClient

from services.gateway.clauses import looks_chinese
from tools.cluster import ROOT, LocalCluster

QUESTIONS = [
    "请介绍一下长城的历史。",
    "Why is the sky blue? Explain in a few sentences.",
    "周末有什么适合全家人的活动？",
    "Give me three tips for sleeping better.",
]
SYSTEM = "适配用户的语言，用简短口语化的文字回答。Answer in the user's language, briefly and conversationally."
SAMPLING = speech_pb2.SamplingParams(temperature=0.0, seed=1, max_tokens=120)


async def pipelined(client: GatewayClient, question: str) -> dict:
    started = time.perf_counter()
    first_audio = 0.0
    reply = ""
    async for event in client.chat_stream(question, sampling=SAMPLING, system_prompt=SYSTEM, timeout=600):
        if event.HasField("audio"):
            first_audio = first_audio or time.perf_counter() - started
        elif event.HasField("summary"):
            reply = event.summary.reply_text
    return {"first_audio": first_audio, "total": time.perf_counter() - started, "reply": reply}


async def sequential(chat: chat_pb2_grpc.ChatServiceStub, tts: tts_pb2_grpc.TtsServiceStub, question: str) -> dict:
    started = time.perf_counter()
    messages = [
        chat_pb2.ChatMessage(role=chat_pb2.ROLE_SYSTEM, text=SYSTEM),
        chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, text=question),
    ]
    reply = "".join(
        [r.text_delta async for r in chat.Generate(chat_pb2.GenerateRequest(messages=messages, sampling=SAMPLING))]
    )
    voice = "zh-baker" if looks_chinese(reply) else "en-joe"
    audio = [r.audio.content async for r in tts.Synthesize(tts_pb2.SynthesizeRequest(text=reply, voice_id=voice))]
    total = time.perf_counter() - started
    assert audio, "no audio"
    return {"first_audio": total, "total": total, "reply": reply}  # the whole reply is returned at once


async def run(cluster: LocalCluster, rounds: int) -> dict:
    results: dict[str, list[dict]] = {"pipelined": [], "sequential": []}
    async with (
        GatewayClient(cluster.gateway_address) as client,
        grpc.aio.insecure_channel(cluster.services["chat"].address) as chat_channel,
        grpc.aio.insecure_channel(cluster.services["tts"].address) as tts_channel,
    ):
        chat = chat_pb2_grpc.ChatServiceStub(chat_channel)
        tts = tts_pb2_grpc.TtsServiceStub(tts_channel)
        await pipelined(client, "Hi.")  # warm-up: first llama.cpp evaluation, worker caches
        for round_number in range(rounds):
            for index, question in enumerate(QUESTIONS):
                order = ("pipelined", "sequential") if (index + round_number) % 2 == 0 else ("sequential", "pipelined")
                for flow in order:
                    result = await (
                        pipelined(client, question) if flow == "pipelined" else sequential(chat, tts, question)
                    )
                    result["question"] = question
                    results[flow].append(result)
                    print(f"  {flow:<10} first audio {result['first_audio']:6.2f} s  total {result['total']:6.2f} s  "
                          f"{question[:40]}", flush=True)  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cluster = LocalCluster(ROOT / ".run" / "bench")
    print("starting the four services...", flush=True)
    cluster.start()
    try:
        results = asyncio.run(run(cluster, args.rounds))
    finally:
        cluster.stop()
    pipelined_first = statistics.median(r["first_audio"] for r in results["pipelined"])
    sequential_first = statistics.median(r["first_audio"] for r in results["sequential"])
    # llama.cpp reuses the KV cache of a shared prompt prefix, so greedy replies can differ slightly
    # between the flows; the pairs with identical replies are the strictly like-for-like ones.
    pairs = [
        (a, b) for a, b in zip(results["pipelined"], results["sequential"], strict=True) if a["reply"] == b["reply"]
    ]
    paired_ratio = statistics.median(b["first_audio"] / a["first_audio"] for a, b in pairs) if pairs else 0.0
    summary = {
        "turns_per_flow": len(results["pipelined"]),
        "median_time_to_first_audio_s": {
            "pipelined": round(pipelined_first, 3),
            "sequential": round(sequential_first, 3),
        },
        "ratio_sequential_over_pipelined": round(sequential_first / pipelined_first, 2),
        "identical_replies": len(pairs),
        "median_ratio_over_identical_replies": round(paired_ratio, 2),
    }
    out = ROOT / "bench-output"
    out.mkdir(exist_ok=True)
    (out / "ttfa.json").write_text(json.dumps({"summary": summary, "turns": results}, ensure_ascii=False, indent=2))
    print(
        f"\ntime to first audio, median of {summary['turns_per_flow']} turns each:\n"
        f"  pipelined gateway : {pipelined_first:.2f} s\n"
        f"  sequential (reference flow: whole reply, then whole TTS): {sequential_first:.2f} s\n"
        f"  ratio sequential / pipelined: {summary['ratio_sequential_over_pipelined']:.2f}x\n"
        f"  turns with the same reply text in both flows: {len(pairs)}/{summary['turns_per_flow']}, "
        f"median per-turn ratio over those: {paired_ratio:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
