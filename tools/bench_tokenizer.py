"""Benchmark the step-audio tokenizer engine on CPU.

    python -m tools.bench_tokenizer                      # tiny fixtures (generated into a temp dir)
    python -m tools.bench_tokenizer --models DIR         # a directory holding Step-Audio-Tokenizer/

Prints the real-time factor and tokens/s of one-shot tokenization of the shared recordings, then
how many streams one process sustains in real time: N streams each fed ``--chunk-ms`` of audio at
real-time pace (one thread each, as the servicer's worker threads); N passes when the 95th
percentile of per-chunk ``feed`` latency stays below the chunk duration.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from services.tokenizer.engine import StreamOptions
from services.tokenizer.engines.step_audio.engine import StepAudioTokenizerEngine
from services.tokenizer.settings import TokenizerSettings

TOKENS = StreamOptions(emit_tokens=True, emit_transcript=False)


def _recordings() -> list[np.ndarray]:
    import soundfile as sf
    import soxr

    from tools.cluster import shared_data_dir

    clips = []
    for path in sorted(shared_data_dir().glob("*.wav")):
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        clips.append(soxr.resample(samples.mean(axis=1), rate, 16000).astype(np.float32))
    if not clips:  # no shared data: a synthetic 10 s signal
        t = np.arange(160000) / 16000
        clips.append((0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(t))).astype(np.float32))
    return clips


def one_shot(engine: StepAudioTokenizerEngine, clips: list[np.ndarray], repeats: int) -> tuple[float, float]:
    """(real-time factor, audio tokens per second of compute)."""
    audio_seconds = compute = 0.0
    tokens = 0
    for _ in range(repeats):
        for clip in clips:
            stream = engine.open_stream(TOKENS)
            start = time.perf_counter()
            events = [*stream.feed(clip), *stream.finish()]
            compute += time.perf_counter() - start
            stream.close()
            tokens += sum(len(e.token_ids) for e in events)  # type: ignore[union-attr]
            audio_seconds += len(clip) / 16000
    return compute / audio_seconds, tokens / compute


def realtime_streams(
    engine: StepAudioTokenizerEngine, clip: np.ndarray, streams: int, chunk: int
) -> tuple[float, float]:
    """(p95 per-chunk latency, max latency) in seconds with ``streams`` paced streams."""
    latencies: list[float] = []
    lock = threading.Lock()
    period = chunk / 16000

    def run(offset: float) -> None:
        stream = engine.open_stream(TOKENS)
        mine = []
        time.sleep(offset)
        begin = time.perf_counter()
        for index, start in enumerate(range(0, len(clip), chunk)):
            due = begin + index * period
            time.sleep(max(0.0, due - time.perf_counter()))
            t0 = time.perf_counter()
            stream.feed(clip[start : start + chunk])
            mine.append(time.perf_counter() - t0)
        stream.finish()
        stream.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(i * period / streams,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return float(np.percentile(latencies, 95)), float(max(latencies))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="directory holding Step-Audio-Tokenizer/ (default: tiny fixtures)")
    parser.add_argument("--chunk-ms", type=int, default=240, help="audio per feed call in the real-time test")
    parser.add_argument("--seconds", type=float, default=6.0, help="audio per stream in the real-time test")
    parser.add_argument("--window", type=float, default=30.0, help="vq06_window_seconds")
    parser.add_argument("--max-streams", type=int, default=64)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        models = args.models
        if models is None:
            from tools.tiny_models import write_step_audio_tokenizer

            models = Path(scratch)
            write_step_audio_tokenizer(models)
        settings = TokenizerSettings(
            models_dir=str(models), vq06_window_seconds=args.window, max_streams=args.max_streams, onnx_provider="cpu"
        )
        engine = StepAudioTokenizerEngine.load(settings)
        clips = _recordings()
        one_shot(engine, clips[:1], 1)  # warm-up
        rtf, tokens_per_second = one_shot(engine, clips, 3)
        total = sum(len(c) for c in clips) / 16000
        print(f"models: {models}  vq06 window: {args.window:g} s  clips: {len(clips)} ({total:.1f} s)")
        print(f"one-shot: RTF {rtf:.4f}  ({tokens_per_second:,.0f} audio tokens/s of compute, 41.67 tokens/s of audio)")
        chunk = args.chunk_ms * 16
        clip = np.tile(np.concatenate(clips), 2)[: int(args.seconds * 16000)]
        best = 0
        streams = 1
        while streams <= args.max_streams:
            p95, worst = realtime_streams(engine, clip, streams, chunk)
            ok = p95 < chunk / 16000
            print(
                f"{streams:3d} real-time streams: per-{args.chunk_ms} ms-chunk latency p95 {p95 * 1000:7.1f} ms, "
                f"max {worst * 1000:7.1f} ms  {'ok' if ok else 'too slow'}"
            )
            if not ok:
                break
            best = streams
            streams *= 2
        print(f"sustained in real time: {best} streams (largest tested N with p95 latency < {args.chunk_ms} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
