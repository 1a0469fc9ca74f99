"""Registry of TTS engines: name -> factory. Factories import their heavy dependencies lazily."""

from __future__ import annotations

from collections.abc import Callable

from services.tts.engine import TtsEngine
from services.tts.settings import TtsSettings


def _embedded(settings: TtsSettings) -> TtsEngine:
    from services.tts.engines.embedded import EmbeddedTtsEngine

    return EmbeddedTtsEngine.load(settings)


ENGINES: dict[str, Callable[[TtsSettings], TtsEngine]] = {"embedded": _embedded}


def create_engine(settings: TtsSettings) -> TtsEngine:
    try:
        factory = ENGINES[settings.engine]
    except KeyError:
        raise SystemExit(f"unknown TTS engine {settings.engine!r}; choose one of {sorted(ENGINES)}") from None
    return factory(settings)
