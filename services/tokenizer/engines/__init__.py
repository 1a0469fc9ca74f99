"""Registry of tokenizer engines: name -> factory (heavy imports happen inside factories)."""

from __future__ import annotations

from collections.abc import Callable

from services.tokenizer.engine import TokenizerEngine
from services.tokenizer.settings import TokenizerSettings


def _embedded(settings: TokenizerSettings) -> TokenizerEngine:
    from services.tokenizer.engines.embedded import EmbeddedTokenizerEngine

    return EmbeddedTokenizerEngine.load(settings)


ENGINES: dict[str, Callable[[TokenizerSettings], TokenizerEngine]] = {"embedded": _embedded}


def create_engine(settings: TokenizerSettings) -> TokenizerEngine:
    try:
        factory = ENGINES[settings.engine]
    except KeyError:
        raise SystemExit(f"unknown tokenizer engine {settings.engine!r}; choose one of {sorted(ENGINES)}") from None
    return factory(settings)
