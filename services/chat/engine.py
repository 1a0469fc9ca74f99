"""The chat engine interface: a conversation in, a stream of text deltas out."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    text: str
    audio_tokens: str = ""  # "<audio_N>..." (engines with supports_audio_tokens only)


@dataclass(frozen=True)
class Sampling:
    """Resolved sampling parameters (engine defaults filled in for unset fields)."""

    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    repetition_penalty: float
    seed: int | None = None


@dataclass(frozen=True)
class EngineInfo:
    name: str
    model: str
    supports_audio_tokens: bool
    max_context_tokens: int
    default_sampling: Sampling


@dataclass
class Usage:
    """Filled in by the engine while it streams; final once the stream ends."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""  # "stop" | "length"


class ChatEngine(abc.ABC):
    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo: ...

    @abc.abstractmethod
    def generate(self, messages: list[Message], sampling: Sampling, usage: Usage) -> AsyncIterator[str]:
        """Stream text deltas of the assistant's reply. Closing the iterator aborts generation.
        Raise InvalidArgument if the prompt does not fit the context, ResourceExhausted when
        the queue is full."""

    async def check_health(self) -> None:
        """Liveness: return if the engine can serve, raise ``EngineUnhealthy`` if not.

        Called every few seconds by the server's health monitor under a deadline (a check that does
        not answer in time counts as failed); it must be cheap and must not block the event loop."""

    async def close(self) -> None:
        """Release the model."""
