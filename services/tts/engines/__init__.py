"""Registry of TTS engines: name -> factory. Factories import their heavy dependencies lazily."""

from __future__ import annotations

from collections.abc import Callable

from services.common import registry as common_registry
from services.tts.engine import TtsEngine
from services.tts.settings import TtsSettings


def _embedded(settings: TtsSettings) -> TtsEngine:
    from services.tts.engines.embedded import EmbeddedTtsEngine

    return EmbeddedTtsEngine.load(settings)


def _step_audio(settings: TtsSettings) -> TtsEngine:
    # vLLM + the CosyVoice decoder: runs only from .venv-vllm (tools/setup_vllm_env.sh), see docs/tts.md.
    from services.tts.engines.step_audio.engine import StepAudioTtsEngine

    return StepAudioTtsEngine.load(settings)


def _synthetic(settings: TtsSettings) -> TtsEngine:
    # No model: deterministic tones at a set pace, for load and fault tests (docs/synthetic.md).
    from services.tts.engines.synthetic import SyntheticTtsEngine

    return SyntheticTtsEngine.load(settings)


ENGINES: dict[str, Callable[[TtsSettings], TtsEngine]] = {
    "embedded": _embedded,
    "step-audio": _step_audio,
    "synthetic": _synthetic,
}


def create_engine(settings: TtsSettings) -> TtsEngine:
    return common_registry.create_engine("TTS", ENGINES, settings.engine, settings)
