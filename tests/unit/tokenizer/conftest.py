"""Tiny Step-Audio-Tokenizer fixtures (generated once per session) and the real recordings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from services.tokenizer.engines.step_audio.engine import StepAudioTokenizerEngine
from services.tokenizer.settings import TokenizerSettings
from tools.tiny_models import write_step_audio_tokenizer


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-models")
    write_step_audio_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def step_audio_engine(tiny_models_dir: Path) -> StepAudioTokenizerEngine:
    return StepAudioTokenizerEngine.load(TokenizerSettings(models_dir=str(tiny_models_dir), onnx_provider="cpu"))


def load_16k(path: Path) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(samples.mean(axis=1), rate, 16000).astype(np.float32)


@pytest.fixture(scope="session")
def recordings() -> dict[str, np.ndarray]:
    from tools.cluster import shared_data_dir

    directory = shared_data_dir()
    if not directory.is_dir():
        pytest.fail(f"the Step-Audio recordings are missing at {directory}: set STEPAUDIO_SHARED_DATA")
    manifest = json.loads((directory / "manifest.json").read_text())
    entries = [*manifest["speakers"].values(), *manifest["clone_prompts"].values()]
    return {entry["file"]: load_16k(directory / entry["file"]) for entry in entries}
