"""Registry of tokenizer engines: name -> factory (heavy imports happen inside factories)."""

from __future__ import annotations

from collections.abc import Callable

from services.common import registry as common_registry
from services.tokenizer.engine import TokenizerEngine
from services.tokenizer.settings import TokenizerSettings


def _embedded(settings: TokenizerSettings) -> TokenizerEngine:
    from services.tokenizer.engines.embedded import EmbeddedTokenizerEngine

    return EmbeddedTokenizerEngine.load(settings)


def _step_audio(settings: TokenizerSettings) -> TokenizerEngine:
    from services.tokenizer.engines.step_audio.engine import StepAudioTokenizerEngine
    from services.tokenizer.engines.step_audio.layout import ModelsDirError

    try:
        return StepAudioTokenizerEngine.load(settings)
    except ModelsDirError as error:  # refuse to start, naming every missing or malformed file
        raise SystemExit(str(error)) from None


def _synthetic(settings: TokenizerSettings) -> TokenizerEngine:
    # No model: an energy VAD and made-up transcripts and tokens, for load and fault tests (docs/synthetic.md).
    from services.tokenizer.engines.synthetic import SyntheticTokenizerEngine

    return SyntheticTokenizerEngine(settings)


ENGINES: dict[str, Callable[[TokenizerSettings], TokenizerEngine]] = {
    "embedded": _embedded,
    "step-audio": _step_audio,
    "synthetic": _synthetic,
}


def create_engine(settings: TokenizerSettings) -> TokenizerEngine:
    return common_registry.create_engine("tokenizer", ENGINES, settings.engine, settings)
