"""Registry of chat engines: name -> factory (heavy imports happen inside factories)."""

from __future__ import annotations

from collections.abc import Callable

from services.chat.engine import ChatEngine
from services.chat.settings import ChatSettings
from services.common import registry as common_registry


def _embedded(settings: ChatSettings) -> ChatEngine:
    from services.chat.engines.embedded import EmbeddedChatEngine

    return EmbeddedChatEngine.load(settings)


def _vllm(settings: ChatSettings) -> ChatEngine:
    # Needs .venv-vllm (tools/setup_vllm_env.sh): vLLM is not installed beside the embedded engines.
    try:
        from services.chat.engines.vllm_engine.engine import VllmChatEngine
    except ImportError as error:
        raise SystemExit(
            f"the vllm chat engine needs vLLM ({error}); run it with .venv-vllm/bin/python (make install)"
        ) from None

    return VllmChatEngine.load(settings)


def _synthetic(settings: ChatSettings) -> ChatEngine:
    # No model: a deterministic reply at a set pace, for load and fault tests (docs/synthetic.md).
    from services.chat.engines.synthetic import SyntheticChatEngine

    return SyntheticChatEngine(settings)


ENGINES: dict[str, Callable[[ChatSettings], ChatEngine]] = {
    "embedded": _embedded,
    "vllm": _vllm,
    "synthetic": _synthetic,
}


def create_engine(settings: ChatSettings) -> ChatEngine:
    return common_registry.create_engine("chat", ENGINES, settings.engine, settings)
