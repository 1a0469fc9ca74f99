"""Build the built-in voices directory the TTS service loads (``TTS_VOICES_DIR``).

    python -m tools.build_voices --tokenizer-models DIR --out voices/ [--source /work/shared/data/step-audio]

Reads the shared recordings' ``manifest.json``: every ``speakers`` entry becomes a voice, except
entries named ``{spk}RAP`` / ``{spk}哼唱`` whose ``{spk}`` exists — those become the ``rap`` /
``humming`` music variants of ``{spk}`` (the reference's speaker entries for music mode). For each
prompt WAV it computes the Step-Audio prompt tokens in process with the step-audio tokenizer
engine, with silence trimming and one gain for the clip (the reference ``wav2token``), copies the
WAV, and writes ``manifest.json`` (see ``services/tts/voices.py`` for the format) last.
The TTS stage never calls the tokenizer for built-in voices: their tokens come from here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile
import soxr

from services.common.atomic import write_atomically
from services.tokenizer.engine import StreamOptions, TokensEvent
from services.tokenizer.engines.step_audio.engine import StepAudioTokenizerEngine
from services.tokenizer.settings import TokenizerSettings
from services.tts.voices import MUSIC_STYLES, load_builtin

MUSIC_SUFFIXES = {"RAP": "rap", "哼唱": "humming"}
SAMPLE_RATE = 16000
# Languages of the built-in voices (the shared manifest does not say); Tingting speaks Mandarin.
DEFAULT_LANGUAGES = ("zh",)


def prompt_tokens(engine: StepAudioTokenizerEngine, wav: Path) -> list[int]:
    """The reference wav2token: mono, 16 kHz, trim silence, energy-normalise, interleave."""
    data, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    samples = soxr.resample(data.mean(axis=1), rate, SAMPLE_RATE).astype(np.float32)
    stream = engine.open_stream(StreamOptions(emit_tokens=True, emit_transcript=False, trim_silence=True))
    try:
        events = [*stream.feed(samples), *stream.finish()]
    finally:
        stream.close()
    return [token for event in events if isinstance(event, TokensEvent) for token in event.token_ids]


def group_speakers(speakers: dict[str, dict]) -> dict[str, dict[str, tuple[str, dict]]]:
    """``{voice_id: {"": (name, entry), "rap": (name, entry), ...}}`` from the manifest's speakers."""
    voices: dict[str, dict[str, tuple[str, dict]]] = {}
    for name, entry in speakers.items():
        base, style = name, ""
        for suffix, music in MUSIC_SUFFIXES.items():
            if name.endswith(suffix) and name[: -len(suffix)] in speakers:
                base, style = name[: -len(suffix)], music
        voices.setdefault(base, {})[style] = (name, entry)
    return voices


def build(source: Path, out: Path, engine: StepAudioTokenizerEngine, log=print) -> dict:
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    voices: dict[str, dict] = {}
    for voice_id, variants in group_speakers(manifest["speakers"]).items():
        if "" not in variants:
            raise SystemExit(f"{voice_id}: music variants without a speech prompt")

        def entry_for(name: str, entry: dict, voice_id: str = voice_id) -> dict:
            wav = source / entry["file"]
            tokens = prompt_tokens(engine, wav)
            shutil.copyfile(wav, out / entry["file"])
            log(f"{name}: {entry['file']} -> {len(tokens)} prompt tokens")
            return {
                "display_name": voice_id,
                "language_codes": list(DEFAULT_LANGUAGES),
                "prompt_text": entry["text"],
                "wav": entry["file"],
                "prompt_tokens": tokens,
            }

        voice = entry_for(*variants[""])
        voice["music"] = {style: entry_for(*variants[style]) for style in MUSIC_STYLES if style in variants}
        voices[voice_id] = voice
    result = {
        "version": 1,
        "about": "Built-in voices of the TTS service, written by tools.build_voices from "
        f"{source / 'manifest.json'}; prompt tokens computed with trim + energy-norm (wav2token).",
        "voices": voices,
    }
    write_atomically(out / "manifest.json", json.dumps(result, ensure_ascii=False, indent=1))
    load_builtin(out)  # what the TTS stage will do: fail here, not there
    return result


def main(argv: list[str] | None = None) -> int:
    from tools.cluster import shared_data_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer-models", required=True, help="Step-Audio-Tokenizer directory")
    parser.add_argument("--out", required=True, type=Path, help="voices directory to write")
    parser.add_argument("--source", type=Path, default=None, help="recordings with manifest.json")
    parser.add_argument("--onnx-provider", default="cpu", help="onnxruntime provider for vq06 (cpu, cuda)")
    args = parser.parse_args(argv)
    engine = StepAudioTokenizerEngine.load(
        TokenizerSettings(models_dir=args.tokenizer_models, onnx_provider=args.onnx_provider)
    )
    build(args.source or shared_data_dir(), args.out, engine)
    print(f"wrote {args.out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
