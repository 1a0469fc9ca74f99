"""Registry of chat engines: name -> factory (heavy imports happen inside factories)."""

from __future__ import annotations

from collections.abc import Callable

from services.chat.engine import ChatEngine
from services.chat.settings import ChatSettings


def _embedded(settings: ChatSettings) -> ChatEngine:
    from services.chat.engines.embedded import EmbeddedChatEngine

    return EmbeddedChatEngine.load(settings)


ENGINES: dict[str, Callable[[ChatSettings], ChatEngine]] = {"embedded": _embedded}


def create_engine(settings: ChatSettings) -> ChatEngine:
    try:
        factory = ENGINES[settings.engine]
    except KeyError:
        raise SystemExit(f"unknown chat engine {settings.engine!r}; choose one of {sorted(ENGINES)}") from None
    return factory(settings)
