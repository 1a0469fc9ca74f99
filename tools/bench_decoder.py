"""Speech-decoder benchmark: real-time factor and first-chunk latency, streaming vs offline.

    python -m tools.bench_decoder                        # tiny random fixtures, CPU
    python -m tools.bench_decoder --folder DIR --seconds 10 --device cuda --flow-dtype bfloat16

RTF = compute seconds / audio seconds (lower is better). First-chunk latency is measured from the
first code handed to the decoder to the first PCM chunk, with all codes available immediately (so it
is decoder compute only, not waiting for the LLM). Also prints the log-spectral distance (dB)
between the streamed and the offline audio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _lsd(a: np.ndarray, b: np.ndarray) -> float:
    def db(x: np.ndarray) -> torch.Tensor:
        spec = torch.stft(torch.from_numpy(x), 1024, 256, window=torch.hann_window(1024), return_complex=True)
        return 10 * torch.log10(spec.abs() ** 2 + 1e-10)

    return float(((db(a) - db(b)) ** 2).mean(0).sqrt().mean())


def main(argv: list[str] | None = None) -> int:
    from services.tts.decoder import DecoderOptions, StepAudioDecoder
    from tools.tiny_models import DECODER_FOLDERS, write_step_audio_tts_decoders

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, help="a CosyVoice-300M-25Hz folder (default: tiny fixtures)")
    parser.add_argument("--seconds", type=float, default=6.0, help="audio length to decode")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--flow-dtype", default="auto")
    parser.add_argument("--first-chunk-tokens", type=int, default=25)
    parser.add_argument("--hop-tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or write_step_audio_tts_decoders(Path(tmp)) / DECODER_FOLDERS[0]
        options = DecoderOptions(
            device=args.device,
            flow_dtype=args.flow_dtype,
            first_chunk_tokens=args.first_chunk_tokens,
            hop_tokens=args.hop_tokens,
        )
        decoder = StepAudioDecoder.load(folder, options)
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16000) / 16000
    prompt = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    voice = decoder.prepare_voice(prompt, 16000, rng.integers(0, 5120, 125))
    codes = rng.integers(0, 5120, round(args.seconds * decoder.config.flow.input_frame_rate))
    decoder.decode(voice, codes[:50])  # warm-up (oneDNN/cuDNN kernel selection)
    list(decoder.decode_stream(voice, iter(codes[:100].tolist())))

    offline_times, stream_times, first_times = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        offline = decoder.decode(voice, codes)
        offline_times.append(time.perf_counter() - start)
        start, first, chunks = time.perf_counter(), None, []
        for chunk in decoder.decode_stream(voice, iter(codes.tolist())):
            first = first if first is not None else time.perf_counter() - start
            chunks.append(chunk)
        stream_times.append(time.perf_counter() - start)
        first_times.append(first or 0.0)
    streamed = np.concatenate(chunks)
    audio_s = offline.size / decoder.sample_rate
    offline_s, stream_s, first_s = (float(np.median(x)) for x in (offline_times, stream_times, first_times))
    print(f"decoder: {folder.name}  device={decoder.device}  flow dtype={decoder.flow.input_embedding.weight.dtype}")
    print(f"audio: {audio_s:.2f} s from {codes.size} codes; prompt 3.00 s / 125 codes; median of {args.repeats}")
    print(f"offline   : {offline_s:.3f} s  RTF {offline_s / audio_s:.4f}  (first audio after {offline_s:.3f} s)")
    print(
        f"streaming : {stream_s:.3f} s  RTF {stream_s / audio_s:.4f}  first chunk {first_s:.3f} s"
        f" ({len(chunks)} chunks, first_chunk_tokens={options.first_chunk_tokens}, hop_tokens={options.hop_tokens})"
    )
    print(
        f"ratios    : streaming/offline compute {stream_s / offline_s:.2f}x; first-chunk/offline latency "
        f"{first_s / offline_s:.2f}x"
    )
    print(f"streamed vs offline log-spectral distance: {_lsd(streamed, offline):.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
