"""Pitch-shift methods compared on speech: accuracy of the shift, intelligibility, speed.

python -m tools.bench_pitch [--shifts -12,-6,-3,3,6,12]

Speech: the Step-Audio prompt recording (a woman, Mandarin) and two sentences each from the embedded English and
Mandarin voices. For each method and shift: the largest error of the median shift over the clips (pYIN on frames
voiced in both, in semitones), the change of whisper-base's character error rate against the unshifted audio (mean
and worst clip), and the real-time factor (processing time / audio duration). The project's method (audiotsm WSOLA
+ soxr resampling) and librosa are installed; the others are measured when importable, e.g. after
``pip install --no-deps pyworld python-stretch stftpitchshift praat-parselmouth pedalboard`` in a throwaway virtual
environment that also sees this one's packages (they are not project dependencies: docs/decisions.md).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import soundfile
import soxr

from services.tts.engine import Controls
from services.tts.postprocess import shift_pitch
from tools.cluster import ROOT, shared_data_dir
from tools.speech_check import character_error_rate

SENTENCES = {
    "en-joe": [
        "The weather is lovely today, so we should take a long walk in the park.",
        "Please remember to buy some fresh bread and milk on your way home.",
    ],
    "zh-baker": ["今天天气很好，我们去公园散步吧。", "请记得在回家的路上买一些新鲜的面包和牛奶。"],
}
RECORDING_TEXT = "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？"


def _librosa(x: np.ndarray, rate: int, st: float) -> np.ndarray:
    return librosa.effects.pitch_shift(x, sr=rate, n_steps=st)


def _world(x: np.ndarray, rate: int, st: float) -> np.ndarray:
    import pyworld

    d = x.astype(np.float64)
    f0, t = pyworld.dio(d, rate)
    f0 = pyworld.stonemask(d, f0, t, rate)
    sp, ap = pyworld.cheaptrick(d, f0, t, rate), pyworld.d4c(d, f0, t, rate)
    return pyworld.synthesize(f0 * 2 ** (st / 12), sp, ap, rate).astype(np.float32)[: len(x)]


def _praat(x: np.ndarray, rate: int, st: float) -> np.ndarray:
    import parselmouth
    from parselmouth.praat import call

    sound = parselmouth.Sound(x.astype(np.float64), rate)
    manipulation = call(sound, "To Manipulation", 0.01, 60, 600)
    tier = call(manipulation, "Extract pitch tier")
    call(tier, "Multiply frequencies", sound.xmin, sound.xmax, 2 ** (st / 12))
    call([tier, manipulation], "Replace pitch tier")
    return call(manipulation, "Get resynthesis (overlap-add)").values[0].astype(np.float32)


def _signalsmith(x: np.ndarray, rate: int, st: float) -> np.ndarray:
    import python_stretch

    stretch = python_stretch.Signalsmith.Stretch()
    stretch.preset(1, rate)
    stretch.setTransposeSemitones(st)
    return stretch.process(x[None].astype(np.float32))[0]


def _stft(x: np.ndarray, rate: int, st: float) -> np.ndarray:
    from stftpitchshift import StftPitchShift

    shifted = StftPitchShift(1024, 256, rate).shiftpitch(x.astype(np.float64), 2 ** (st / 12), quefrency=0.001)
    return shifted.astype(np.float32)


def _rubberband(x: np.ndarray, rate: int, st: float) -> np.ndarray:
    import pedalboard

    return pedalboard.PitchShift(semitones=st)(x[None].astype(np.float32), rate)[0]


METHODS: dict[str, Callable[[np.ndarray, int, float], np.ndarray]] = {
    "audiotsm WSOLA + soxr resampling (chosen)": shift_pitch,
    "librosa pitch_shift (phase vocoder + resampling)": _librosa,
    "pyworld (WORLD: dio, CheapTrick, D4C)": _world,
    "praat-parselmouth (Praat PSOLA)": _praat,
    "python-stretch (Signalsmith Stretch)": _signalsmith,
    "stftpitchshift (formant lifter 1 ms)": _stft,
    "pedalboard PitchShift (Rubber Band)": _rubberband,
}


def f0_track(x: np.ndarray, rate: int) -> np.ndarray:
    f0, voiced, _ = librosa.pyin(
        soxr.resample(x, rate, 16000), fmin=50, fmax=800, sr=16000, frame_length=1024, hop_length=160
    )
    return np.where(voiced, f0, np.nan)


def shift_error(x: np.ndarray, y: np.ndarray, rate: int, st: float) -> float:
    a, b = f0_track(x, rate), f0_track(y, rate)
    n = min(len(a), len(b))
    both = ~np.isnan(a[:n]) & ~np.isnan(b[:n])
    return float(np.median(12 * np.log2(b[:n][both] / a[:n][both])) - st)


async def synthesised_clips() -> list[tuple[str, str, np.ndarray, int]]:
    from services.tts.engines import create_engine
    from services.tts.settings import TtsSettings

    engine = await asyncio.to_thread(create_engine, TtsSettings())
    clips = []
    try:
        voices = {voice.voice_id: voice for voice in engine.voices()}
        for voice_id, texts in SENTENCES.items():
            for text in texts:
                chunks = [c.samples async for c in engine.synthesize(text, voices[voice_id], Controls())]
                clips.append((voice_id[:2], text, np.concatenate(chunks), voices[voice_id].native_sample_rate_hz))
    finally:
        await engine.close()
    return clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shifts", default="-12,-6,-3,3,6,12", help="semitones, comma-separated")
    shifts = [float(s) for s in parser.parse_args().shifts.split(",")]
    from faster_whisper import WhisperModel

    whisper = WhisperModel(str(ROOT / ".models" / "whisper-base-ct2"), device="cpu", compute_type="int8")

    def cer(language: str, text: str, x: np.ndarray, rate: int) -> float:
        segments, _ = whisper.transcribe(soxr.resample(x, rate, 16000), language=language, beam_size=5)
        return character_error_rate(text, "".join(segment.text for segment in segments))

    recording, rate = soundfile.read(Path(shared_data_dir()) / "Tingting_prompt.wav", dtype="float32")
    clips = [("zh", RECORDING_TEXT, recording, rate), *asyncio.run(synthesised_clips())]
    baseline = [cer(language, text, x, rate) for language, text, x, rate in clips]
    print("method | shift (st) | max |shift error| (st) | CER change mean / worst | RTF")
    for name, method in METHODS.items():
        try:
            method(np.zeros(4096, np.float32), 16000, 1.0)
        except ImportError:
            print(f"{name} | not installed")
            continue
        for st in shifts:
            errors, changes, seconds, duration = [], [], 0.0, 0.0
            for (language, text, x, rate), base in zip(clips, baseline, strict=True):
                started = time.perf_counter()
                y = method(x, rate, st)
                seconds += time.perf_counter() - started
                duration += len(x) / rate
                errors.append(abs(shift_error(x, y, rate, st)))
                changes.append(cer(language, text, y, rate) - base)
            print(
                f"{name} | {st:+g} | {max(errors):.2f} | {np.mean(changes):+.3f} / {max(changes):+.3f} | "
                f"{seconds / duration:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
