"""Load benchmark of the serving stack: many concurrent conversations through the gateway, synthetic engines.

    python -m tools.load                                   # 200 streams for 60 s, the default mix
    python -m tools.load --streams 50 --soak 30 --json load.json
    make load LOAD_ARGS="--streams 50 --soak 5"

Starts the four services as real processes (tools/cluster.py) with the ``synthetic`` engine in every stage
(docs/synthetic.md: deterministic text, tokens and audio at set rates, no model), so what is measured is the
serving stack. Each stream is one simulated user doing turns back to back, one kind per stream (``--mix``):

- ``chat-text``: Chat with a text question, in a session (one turn in four in Chinese);
- ``chat-audio``: Chat with a 2 s spoken question (WAV);
- ``synthesize``: Synthesize of a ~150-character text;
- ``streaming``: StreamingChat fed with PCM at real-time pace (100 ms chunks): 1.2 s of speech, then silence
  while the reply plays, then the next utterance; the conversation is reopened every few turns.

After a turn the user listens: the next turn starts once the reply audio has played (real time from its first
chunk). Measured at the client: turns and errors by status code, time to first audio (from the request, or for
``streaming`` from the end of the speech, which includes the VAD endpoint silence) and the gaps between
consecutive audio chunks of a reply; at the services (when this tool started them, not with ``--address``): CPU,
RSS and their own histograms (event-loop lag; the gateway's TTS first chunk and chunk gaps), which tell where a
delay arises. ``--soak MINUTES`` keeps the load on for that long, samples each service's RSS every minute and reports
its growth from the first minute.

Exit code 0 when the run met the targets (no errors, p99 chunk gap within ``--max-gap-ms``; for a soak, RSS growth
within ``--max-growth-percent``), 1 otherwise. A benchmark, not a test: results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import re
import sys
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil
import soundfile
from stepaudio.common.v1 import audio_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from tools.cluster import ROOT, LocalCluster

KINDS = ("chat-text", "chat-audio", "synthesize", "streaming")
RATE = 16000
MIC_CHUNK_SECONDS = 0.1
SPEECH_SECONDS = 1.2
TURN_TIMEOUT = 60.0
STREAMS_PER_CHANNEL = 25  # several HTTP/2 connections, as from several client hosts
TURNS_PER_CONVERSATION = 4  # a StreamingChat call is reopened after this many replies
ERROR_BACKOFF_SECONDS = 1.0

# The services' environment: synthetic engines, and limits raised above the load (the defaults are sized for models).
SYNTHETIC_ENV = {
    "TOKENIZER_ENGINE": "synthetic",
    "CHAT_ENGINE": "synthetic",
    "TTS_ENGINE": "synthetic",
    "GATEWAY_VOICE_EN": "synthetic-en",
    "GATEWAY_VOICE_ZH": "synthetic-zh",
}
QUESTIONS_EN = (
    "What is the weather like in the mountains today?",
    "Tell me something interesting about rivers and their deltas.",
    "How do I keep a small garden alive through a dry summer?",
)
QUESTIONS_ZH = ("今天的天气怎么样？", "请介绍一下长城的历史。")
SYNTHESIZE_TEXTS = (
    (
        "synthetic-en",
        "Good morning. The train to the coast leaves at nine, and the next one an hour later, "
        "so there is plenty of time for breakfast before we go.",
    ),
    ("synthetic-zh", "早上好。今天的天气很好，我们一起去公园散步吧，下午再去看看朋友。"),
)


def limits_env(streams: int) -> dict[str, str]:
    """Admission limits above the offered load, so that what is measured is latency, not rejections."""
    rpcs = str(max(64, 4 * streams))
    env = {f"{service}_MAX_CONCURRENT_RPCS": rpcs for service in ("GATEWAY", "TOKENIZER", "CHAT", "TTS")}
    env["GATEWAY_MAX_ACTIVE_TURNS"] = str(max(32, 2 * streams))
    return env


# --- measurements ---------------------------------------------------------------------------------------------------


def percentiles(values: array) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    data = np.frombuffer(values, dtype=np.float64)
    p50, p99 = np.percentile(data, [50, 99])
    return {"count": len(data), "p50": float(p50), "p99": float(p99), "max": float(data.max())}


@dataclass
class KindStats:
    turns: int = 0
    errors: Counter = field(default_factory=Counter)
    first_audio: array = field(default_factory=lambda: array("d"))
    gaps: array = field(default_factory=lambda: array("d"))
    audio_seconds: float = 0.0

    def report(self) -> dict:
        return {
            "turns_ok": self.turns,
            "errors": dict(self.errors),
            "audio_seconds": round(self.audio_seconds, 1),
            "time_to_first_audio_seconds": percentiles(self.first_audio),
            "chunk_gap_seconds": percentiles(self.gaps),
        }


class Reply:
    """The audio of one reply as it arrives: first-audio time, gaps, and when it has finished playing."""

    def __init__(self, stats: KindStats, started: float) -> None:
        self._stats = stats
        self._started = started
        self.first = 0.0
        self._last = 0.0
        self.seconds = 0.0

    def audio(self, chunk: audio_pb2.AudioChunk) -> None:
        now = time.perf_counter()
        if self.first:
            self._stats.gaps.append(now - self._last)
        else:
            self.first = now
            self._stats.first_audio.append(now - self._started)
        self._last = now
        self.seconds += len(chunk.content) / 2 / chunk.format.sample_rate_hz

    def finished(self) -> None:
        self._stats.turns += 1
        self._stats.audio_seconds += self.seconds

    async def played(self) -> None:
        """Wait until a listener has heard the whole reply (real time from its first chunk)."""
        if self.first:
            await asyncio.sleep(max(0.0, self.first + self.seconds - time.perf_counter()))


def error_name(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


# --- audio ----------------------------------------------------------------------------------------------------------


def speech(seconds: float) -> np.ndarray:
    """A voiced-sounding tone (the synthetic tokenizer's VAD hears energy, not words)."""
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def spoken_question_wav() -> bytes:
    audio = np.concatenate([np.zeros(RATE // 5, np.float32), speech(1.5), np.zeros(RATE * 3 // 10, np.float32)])
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


MIC_CHUNK = round(MIC_CHUNK_SECONDS * RATE)
SPEECH_CHUNKS = [pcm16(piece) for piece in np.split(speech(SPEECH_SECONDS), round(SPEECH_SECONDS / MIC_CHUNK_SECONDS))]
SILENCE_CHUNK = bytes(2 * MIC_CHUNK)


# --- simulated users ------------------------------------------------------------------------------------------------


@dataclass
class User:
    number: int
    kind: str
    stub: gateway_pb2_grpc.GatewayServiceStub
    stats: KindStats
    deadline: float  # perf_counter time after which no new turn starts
    turns_left: float  # math.inf with a duration

    def more(self) -> bool:
        return self.turns_left > 0 and time.perf_counter() < self.deadline

    def took_turn(self) -> None:
        self.turns_left -= 1

    async def failed(self, error: BaseException) -> None:
        self.stats.errors[error_name(error)] += 1
        await asyncio.sleep(ERROR_BACKOFF_SECONDS)


async def chat_turn(user: User, request: gateway_pb2.ChatRequest) -> None:
    reply = Reply(user.stats, time.perf_counter())
    summary = False
    async for event in user.stub.Chat(request, timeout=TURN_TIMEOUT):
        if event.HasField("audio"):
            reply.audio(event.audio)
        elif event.HasField("summary"):
            summary = True
    if not summary or not reply.first:
        raise RuntimeError("NO_SUMMARY" if not summary else "NO_AUDIO")
    reply.finished()
    await reply.played()


async def run_chat_text(user: User) -> None:
    session = await user.stub.CreateSession(gateway_pb2.CreateSessionRequest(), timeout=TURN_TIMEOUT)
    session_id = session.session.session_id
    try:
        turn = 0
        while user.more():
            questions = QUESTIONS_ZH if turn % 4 == 3 else QUESTIONS_EN
            text = f"{questions[(user.number + turn) % len(questions)]} ({user.number}.{turn})"
            request = gateway_pb2.ChatRequest(session_id=session_id, input=gateway_pb2.TurnInput(text=text))
            turn += 1
            user.took_turn()
            try:
                await chat_turn(user, request)
            except (grpc.aio.AioRpcError, RuntimeError) as error:
                await user.failed(error)
    finally:
        await user.stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=session_id), timeout=TURN_TIMEOUT)


async def run_chat_audio(user: User, wav: bytes) -> None:
    audio = audio_pb2.Audio(format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV), content=wav)
    request = gateway_pb2.ChatRequest(input=gateway_pb2.TurnInput(audio=audio))
    while user.more():
        user.took_turn()
        try:
            await chat_turn(user, request)
        except (grpc.aio.AioRpcError, RuntimeError) as error:
            await user.failed(error)


async def run_synthesize(user: User) -> None:
    turn = 0
    while user.more():
        voice, text = SYNTHESIZE_TEXTS[(user.number + turn) % len(SYNTHESIZE_TEXTS)]
        request = gateway_pb2.SynthesizeRequest(text=f"{text} {turn}", voice_id=voice)
        turn += 1
        user.took_turn()
        reply = Reply(user.stats, time.perf_counter())
        try:
            async for response in user.stub.Synthesize(request, timeout=TURN_TIMEOUT):
                reply.audio(response.audio)
            if not reply.first:
                raise RuntimeError("NO_AUDIO")
        except (grpc.aio.AioRpcError, RuntimeError) as error:
            await user.failed(error)
            continue
        reply.finished()
        await reply.played()


class Conversation:
    """One StreamingChat call: a microphone at real-time pace, the user speaking again once a reply has played."""

    def __init__(self, user: User, session_id: str) -> None:
        self._user = user
        self._session_id = session_id
        self._speak_at = time.perf_counter()  # when the next utterance starts
        self._speech_ended = 0.0
        self._replies = 0
        self._done = asyncio.Event()  # no more utterances: the microphone closes after the pending reply
        self._waiting = False  # an utterance was sent and its reply has not ended yet

    async def microphone(self) -> AsyncIterator[gateway_pb2.StreamingChatRequest]:
        yield gateway_pb2.StreamingChatRequest(
            config=gateway_pb2.StreamingChatConfig(session_id=self._session_id, disable_barge_in=True)
        )
        next_chunk = time.perf_counter()
        speech_left: list[bytes] = []
        while speech_left or self._waiting or not self._done.is_set():
            if (
                not speech_left
                and not self._waiting
                and not self._done.is_set()
                and time.perf_counter() >= self._speak_at
            ):
                speech_left = list(SPEECH_CHUNKS)
                self._waiting = True
            # A chunk leaves once it has been "recorded": the last speech chunk's send time is the end of the speech.
            chunk = speech_left.pop(0) if speech_left else SILENCE_CHUNK
            if chunk is not SILENCE_CHUNK and not speech_left:
                self._speech_ended = time.perf_counter()
            yield gateway_pb2.StreamingChatRequest(audio_content=chunk)
            next_chunk += MIC_CHUNK_SECONDS
            await asyncio.sleep(max(0.0, next_chunk - time.perf_counter()))

    async def run(self) -> None:
        reply: Reply | None = None
        seconds = TURNS_PER_CONVERSATION * 40 + TURN_TIMEOUT
        async for event in self._user.stub.StreamingChat(self.microphone(), timeout=seconds):
            kind = event.WhichOneof("event")
            if kind == "audio":
                if reply is None:
                    reply = Reply(self._user.stats, self._speech_ended)
                reply.audio(event.audio)
            elif kind in ("summary", "interrupted"):
                if kind == "interrupted":
                    self._user.stats.errors["INTERRUPTED"] += 1
                elif reply is None:
                    self._user.stats.errors["NO_AUDIO"] += 1
                else:
                    reply.finished()
                    await reply.played()
                reply = None
                self._replies += 1
                self._user.took_turn()
                self._waiting = False
                self._speak_at = time.perf_counter() + 0.3
                if self._replies >= TURNS_PER_CONVERSATION or not self._user.more():
                    self._done.set()


async def run_streaming(user: User) -> None:
    session = await user.stub.CreateSession(gateway_pb2.CreateSessionRequest(), timeout=TURN_TIMEOUT)
    session_id = session.session.session_id
    try:
        while user.more():
            try:
                await Conversation(user, session_id).run()
            except grpc.aio.AioRpcError as error:
                user.took_turn()  # a failed conversation counts as a turn, so --turns always ends
                await user.failed(error)
    finally:
        await user.stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=session_id), timeout=TURN_TIMEOUT)


async def run_user(user: User, start_delay: float, wav: bytes) -> None:
    await asyncio.sleep(start_delay)
    try:
        if user.kind == "chat-text":
            await run_chat_text(user)
        elif user.kind == "chat-audio":
            await run_chat_audio(user, wav)
        elif user.kind == "synthesize":
            await run_synthesize(user)
        else:
            await run_streaming(user)
    except grpc.aio.AioRpcError as error:  # session create/delete
        user.stats.errors[error_name(error)] += 1


# --- processes ------------------------------------------------------------------------------------------------------


class ProcessSampler:
    """RSS and CPU time of the service processes and of this client."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._processes["client"] = psutil.Process(os.getpid())
        self.samples: list[dict] = []  # {"minute", "rss_mib": {name: MiB}}
        self.cpu: dict[str, float] = {}  # CPU % (of one core) per process over the load, once it has ended
        self._cpu_start = self._cpu()
        self._wall_start = time.perf_counter()

    def _cpu(self) -> dict[str, float]:
        return {name: sum(p.cpu_times()[:2]) for name, p in self._processes.items()}

    def rss_mib(self) -> dict[str, float]:
        return {name: p.memory_info().rss / 2**20 for name, p in self._processes.items() if name != "client"}

    def sample(self, minute: float) -> None:
        self.samples.append({"minute": round(minute, 2), "rss_mib": self.rss_mib()})

    def start_cpu(self) -> None:
        self._cpu_start, self._wall_start = self._cpu(), time.perf_counter()
        self._machine_start = psutil.cpu_times()

    def stop_cpu(self) -> None:
        wall = time.perf_counter() - self._wall_start
        now = self._cpu()
        self.cpu = {name: round(100 * (now[name] - self._cpu_start[name]) / wall, 1) for name in now}
        # The whole machine, in % of one core: what else ran beside the benchmark (a shared machine).
        machine = psutil.cpu_times()
        busy = _busy_seconds(machine) - _busy_seconds(self._machine_start)
        self.cpu["machine"] = round(100 * busy / wall, 1)
        self.cpu["others"] = round(self.cpu["machine"] - sum(v for k, v in self.cpu.items() if k != "machine"), 1)
        # A virtual machine's CPU taken by its host: time the benchmark wanted and did not get.
        self.cpu["steal"] = round(
            100 * (getattr(machine, "steal", 0) - getattr(self._machine_start, "steal", 0)) / wall, 1
        )


def _busy_seconds(times: psutil._common.scputimes) -> float:
    return times.user + times.nice + times.system + getattr(times, "irq", 0) + getattr(times, "softirq", 0)


# Histograms read from the services' /metrics before and after the load: they locate delays (which event loop lags,
# whether a gap is already there when the gateway sends a chunk, how long the TTS stage takes to its first chunk).
SERVICE_HISTOGRAMS = {
    "stepaudio_event_loop_lag_seconds": ("gateway", "tokenizer", "chat", "tts"),
    "stepaudio_gateway_inter_chunk_gap_seconds": ("gateway",),
    "stepaudio_gateway_tts_first_chunk_seconds": ("gateway",),
    "stepaudio_gateway_chat_time_to_first_token_seconds": ("gateway",),
    "stepaudio_gateway_time_to_first_audio_seconds": ("gateway",),
}
_BUCKET = re.compile(r'^(\w+)_bucket\{(?:[^}]*,)?le="([^"]+)"[^}]*\}\s+(\S+)$')


def read_histograms(metrics_urls: dict[str, str]) -> dict[str, dict[str, dict[float, float]]]:
    """{service: {histogram: {upper bound: cumulative count}}} of SERVICE_HISTOGRAMS (blocking: call on a thread)."""
    result: dict[str, dict[str, dict[float, float]]] = {}
    for service, url in metrics_urls.items():
        wanted = {name for name, services in SERVICE_HISTOGRAMS.items() if service in services}
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        histograms: dict[str, dict[float, float]] = {}
        for line in text.splitlines():
            match = _BUCKET.match(line)
            if match and match.group(1) in wanted:
                buckets = histograms.setdefault(match.group(1), {})
                bound = float(match.group(2))
                buckets[bound] = buckets.get(bound, 0.0) + float(match.group(3))
        result[service] = histograms
    return result


def histogram_delta(before: dict, after: dict) -> dict[str, dict[str, dict]]:
    """p50 and p99 of what each histogram recorded between the two readings, as bucket upper bounds (seconds)."""
    report: dict[str, dict[str, dict]] = {}
    for service, histograms in after.items():
        for name, buckets in histograms.items():
            earlier = before.get(service, {}).get(name, {})
            counts = sorted((bound, count - earlier.get(bound, 0.0)) for bound, count in buckets.items())
            total = counts[-1][1] if counts else 0.0
            summary: dict = {"count": int(total)}
            for label, quantile in (("p50_at_most", 0.5), ("p99_at_most", 0.99)):
                if total:
                    summary[label] = next(bound for bound, count in counts if count >= quantile * total)
            report.setdefault(service, {})[name.removeprefix("stepaudio_")] = summary
    return report


async def loop_lag(samples: array, stop: asyncio.Event) -> None:
    """How late this client's own event loop runs a 50 ms timer (client-side delay inflates measured gaps)."""
    while not stop.is_set():
        expected = time.perf_counter() + 0.05
        await asyncio.sleep(0.05)
        samples.append(max(0.0, time.perf_counter() - expected))


# --- run --------------------------------------------------------------------------------------------------------------


def assign_kinds(streams: int, mix: dict[str, int]) -> list[str]:
    """Stream i gets kind ``cycle[i % len(cycle)]``: the mix's proportions, interleaved."""
    cycle = [kind for kind in KINDS for _ in range(mix.get(kind, 0))]
    return [cycle[i % len(cycle)] for i in range(streams)]


async def drive(args: argparse.Namespace, address: str, pids: dict[str, int], metrics_urls: dict[str, str]) -> dict:
    mix = parse_mix(args.mix)
    kinds = assign_kinds(args.streams, mix)
    stats = {kind: KindStats() for kind in KINDS if kind in kinds}
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(math.ceil(args.streams / STREAMS_PER_CHANNEL))
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 30)
    stubs = [gateway_pb2_grpc.GatewayServiceStub(channel) for channel in channels]
    minutes = args.soak if args.soak else args.duration / 60
    started = time.perf_counter()
    deadline = started + args.ramp + minutes * 60
    turns = args.turns if args.turns else math.inf
    users = [
        User(i, kind, stubs[i // STREAMS_PER_CHANNEL], stats[kind], deadline, turns) for i, kind in enumerate(kinds)
    ]
    sampler = ProcessSampler(pids)
    wav = spoken_question_wav()
    lag = array("d")
    stop = asyncio.Event()
    lag_task = asyncio.create_task(loop_lag(lag, stop))
    tasks = [asyncio.create_task(run_user(u, args.ramp * i / len(users), wav)) for i, u in enumerate(users)]
    print(
        f"{args.streams} streams ({', '.join(f'{k} {kinds.count(k)}' for k in stats)}) ramping up over "
        f"{args.ramp:g} s, then {minutes:g} min of load...",
        file=sys.stderr,
    )
    measuring = asyncio.create_task(
        measure_services(sampler, metrics_urls, started + args.ramp, args.sample_seconds, tasks)
    )
    await asyncio.gather(*tasks)
    stop.set()
    _, histograms = await asyncio.gather(lag_task, measuring)
    elapsed = time.perf_counter() - started
    sampler.sample((time.perf_counter() - started - args.ramp) / 60)
    for channel in channels:
        await channel.close()
    return summarize(args, stats, sampler, lag, elapsed, mix, histograms)


async def measure_services(
    sampler: ProcessSampler, metrics_urls: dict[str, str], load_start: float, interval: float, tasks: list
) -> dict:
    """From the end of the ramp to the end of the load: RSS every ``interval`` seconds (the first at the start), CPU,
    and what the services' histograms recorded meanwhile."""
    await asyncio.sleep(max(0.0, load_start - time.perf_counter()))
    sampler.start_cpu()
    before = await asyncio.to_thread(read_histograms, metrics_urls)
    next_sample = load_start
    while not all(task.done() for task in tasks):
        if time.perf_counter() >= next_sample:
            sampler.sample((time.perf_counter() - load_start) / 60)
            next_sample += interval
        await asyncio.sleep(1.0)
    sampler.stop_cpu()
    return histogram_delta(before, await asyncio.to_thread(read_histograms, metrics_urls))


def growth(samples: list[dict], baseline_minute: float) -> dict[str, float]:
    """RSS growth (%) of each service from the first sample at or after ``baseline_minute`` to the last."""
    baseline = next((s for s in samples if s["minute"] >= baseline_minute - 1e-6), samples[0])
    last = samples[-1]
    return {name: round(100 * (last["rss_mib"][name] - rss) / rss, 2) for name, rss in baseline["rss_mib"].items()}


def summarize(
    args: argparse.Namespace,
    stats: dict[str, KindStats],
    sampler: ProcessSampler,
    lag: array,
    elapsed: float,
    mix: dict[str, int],
    histograms: dict,
) -> dict:
    errors: Counter = Counter()
    first_audio, gaps = array("d"), array("d")
    for kind_stats in stats.values():
        errors.update(kind_stats.errors)
        first_audio.extend(kind_stats.first_audio)
        gaps.extend(kind_stats.gaps)
    result = {
        "config": {
            "streams": args.streams,
            "mix": mix,
            "duration_seconds": args.duration if not args.soak else args.soak * 60,
            "turns_per_stream": args.turns or None,
            "ramp_seconds": args.ramp,
            "soak_minutes": args.soak or None,
            "engine_env": {**SYNTHETIC_ENV, **limits_env(args.streams), **dict(args.set)},
            "cpus": os.cpu_count(),
        },
        "elapsed_seconds": round(elapsed, 1),
        "turns_ok": sum(s.turns for s in stats.values()),
        "errors": dict(errors),
        "time_to_first_audio_seconds": percentiles(first_audio),
        "chunk_gap_seconds": percentiles(gaps),
        "by_kind": {kind: s.report() for kind, s in stats.items()},
        "client_loop_lag_seconds": percentiles(lag),
        "service_histograms": histograms,
        "cpu_percent": sampler.cpu,
        "rss_samples": sampler.samples,
        "rss_growth_percent": growth(sampler.samples, 1.0 if args.soak else 0.0) if sampler.samples else {},
    }
    gap_p99 = result["chunk_gap_seconds"].get("p99", math.inf)
    targets = {"zero errors": not errors, f"p99 chunk gap <= {args.max_gap_ms:g} ms": gap_p99 * 1000 <= args.max_gap_ms}
    if args.soak and result["rss_growth_percent"]:
        worst = max(result["rss_growth_percent"].values(), default=math.inf)
        targets[f"RSS growth <= {args.max_growth_percent:g} %"] = worst <= args.max_growth_percent
    result["targets_met"] = targets
    return result


def print_report(result: dict) -> None:
    def ms(stats: dict, key: str) -> str:
        return f"{1000 * stats[key]:.0f} ms" if key in stats else "-"

    print(
        f"\n{result['config']['streams']} streams, {result['elapsed_seconds']} s, {result['turns_ok']} turns ok, "
        f"errors: {result['errors'] or 'none'}"
    )
    print(
        f"{'kind':<12} {'turns':>6} {'errors':>7} {'TTFA p50':>9} {'TTFA p99':>9} {'gap p50':>8} {'gap p99':>8} "
        f"{'gap max':>8}"
    )
    rows = [
        *result["by_kind"].items(),
        (
            "all",
            {
                "turns_ok": result["turns_ok"],
                "errors": result["errors"],
                "time_to_first_audio_seconds": result["time_to_first_audio_seconds"],
                "chunk_gap_seconds": result["chunk_gap_seconds"],
            },
        ),
    ]
    for kind, row in rows:
        ttfa, gap = row["time_to_first_audio_seconds"], row["chunk_gap_seconds"]
        print(
            f"{kind:<12} {row['turns_ok']:>6} {sum(row['errors'].values()):>7} {ms(ttfa, 'p50'):>9} "
            f"{ms(ttfa, 'p99'):>9} {ms(gap, 'p50'):>8} {ms(gap, 'p99'):>8} {ms(gap, 'max'):>8}"
        )
    print(
        f"client event-loop lag: p99 {ms(result['client_loop_lag_seconds'], 'p99')}, "
        f"max {ms(result['client_loop_lag_seconds'], 'max')}"
    )
    for service, histograms in result["service_histograms"].items():
        for name, summary in histograms.items():
            if summary["count"]:
                print(
                    f"{service} {name}: p50 <= {1000 * summary['p50_at_most']:g} ms, "
                    f"p99 <= {1000 * summary['p99_at_most']:g} ms ({summary['count']})"
                )
    print(
        "CPU % (of one core) since the end of the ramp: "
        + ", ".join(f"{name} {value}" for name, value in result["cpu_percent"].items())
    )
    if result["rss_samples"]:
        first, last = result["rss_samples"][0]["rss_mib"], result["rss_samples"][-1]["rss_mib"]
        print(
            "RSS MiB (first sample -> last): "
            + ", ".join(f"{name} {first[name]:.0f} -> {last[name]:.0f}" for name in first)
        )
        print(
            "RSS growth % (from the baseline sample): "
            + ", ".join(f"{name} {value:+.2f}" for name, value in result["rss_growth_percent"].items())
        )
    for target, met in result["targets_met"].items():
        print(f"{'PASS' if met else 'FAIL'}  {target}")


def parse_mix(text: str) -> dict[str, int]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in KINDS:
            raise SystemExit(f"--mix: unknown kind {name.strip()!r}; kinds: {', '.join(KINDS)}")
        mix[name.strip()] = int(weight or 1)
    if not any(mix.values()):
        raise SystemExit("--mix: every weight is 0")
    return mix


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="concurrent simulated users (default 200)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of full load after the ramp (60)")
    parser.add_argument("--turns", type=int, default=0, help="turns per stream instead of a duration (0: duration)")
    parser.add_argument(
        "--mix",
        default="chat-text=1,chat-audio=1,synthesize=1,streaming=1",
        help=f"weights of the stream kinds ({', '.join(KINDS)})",
    )
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which the streams start (10)")
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="run this many minutes, sample RSS every minute, report growth from minute 1",
    )
    parser.add_argument(
        "--sample-seconds", type=float, default=0.0, help="RSS sampling interval (default: 60 in a soak, else 10)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=lambda s: tuple(s.split("=", 1)),
        metavar="ENV=VALUE",
        help="extra service environment, e.g. TTS_SYNTHETIC_REAL_TIME_FACTOR=0.3",
    )
    parser.add_argument("--address", default="", help="use a running gateway instead of starting a cluster")
    parser.add_argument("--run-dir", default=str(ROOT / ".run" / "load"), help="logs, sessions and voices")
    parser.add_argument("--json", default="", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument("--max-gap-ms", type=float, default=50.0, help="target p99 chunk gap (50)")
    parser.add_argument("--max-growth-percent", type=float, default=5.0, help="target soak RSS growth (5)")
    args = parser.parse_args(argv)
    if not args.sample_seconds:
        args.sample_seconds = 60.0 if args.soak else 10.0
    if args.turns:
        args.duration = 24 * 3600.0  # bounded by the turns
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.address:
        result = asyncio.run(drive(args, args.address, {}, {}))
    else:
        run_dir = Path(args.run_dir)
        env = {
            **SYNTHETIC_ENV,
            **limits_env(args.streams),
            "TTS_REGISTRY_DIR": str(run_dir / "voices"),
            **dict(args.set),
        }
        cluster = LocalCluster(run_dir, env=env)
        print(f"starting the four services with synthetic engines (logs in {run_dir})...", file=sys.stderr)
        cluster.start(timeout=120)
        try:
            pids = {name: service.process.pid for name, service in cluster.services.items()}
            metrics_urls = {name: service.metrics_url for name, service in cluster.services.items()}
            result = asyncio.run(drive(args, cluster.gateway_address, pids, metrics_urls))
        finally:
            exit_codes = cluster.stop()
        result["exit_codes"] = exit_codes
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if all(result["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
