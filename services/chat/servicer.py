"""gRPC adapter of the chat engine: validation, defaults, streaming, summary."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator

import grpc
from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc
from stepaudio.common.v1 import speech_pb2

from services.chat.engine import ChatEngine, Message, Sampling, Usage
from services.chat.settings import ChatSettings
from services.common.errors import FailedPrecondition, InvalidArgument

_ROLES = {chat_pb2.ROLE_SYSTEM: "system", chat_pb2.ROLE_USER: "user", chat_pb2.ROLE_ASSISTANT: "assistant"}
_FINISH = {"stop": chat_pb2.FINISH_REASON_STOP, "length": chat_pb2.FINISH_REASON_LENGTH}


def _in_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> float:
    bracket = "(" if low_open else "["
    if not math.isfinite(value):  # NaN compares false both ways and would slip through the range check
        raise InvalidArgument(f"sampling.{name} is {value}: send a finite number in {bracket}{low:g}, {high:g}]")
    if (value <= low if low_open else value < low) or value > high:
        raise InvalidArgument(f"sampling.{name} {value:g} is out of range {bracket}{low:g}, {high:g}]")
    return value


def resolve_sampling(requested: speech_pb2.SamplingParams, default: Sampling) -> Sampling:
    """Engine defaults with the request's set fields on top, each range-checked."""
    field = requested.HasField
    return Sampling(
        temperature=_in_range("temperature", requested.temperature, 0, 2)
        if field("temperature")
        else default.temperature,
        top_p=_in_range("top_p", requested.top_p, 0, 1, low_open=True) if field("top_p") else default.top_p,
        top_k=int(_in_range("top_k", requested.top_k, 0, 1000)) if field("top_k") else default.top_k,
        max_tokens=int(_in_range("max_tokens", requested.max_tokens, 1, 4096))
        if field("max_tokens")
        else default.max_tokens,
        repetition_penalty=_in_range("repetition_penalty", requested.repetition_penalty, 0.5, 2)
        if field("repetition_penalty")
        else default.repetition_penalty,
        seed=requested.seed if field("seed") else default.seed,
    )


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, engine: ChatEngine, settings: ChatSettings) -> None:
        self._engine = engine
        self._settings = settings

    def _messages(self, request: chat_pb2.GenerateRequest) -> list[Message]:
        if not request.messages:
            raise InvalidArgument("messages is empty: send at least one user message")
        if len(request.messages) > self._settings.max_messages:
            raise InvalidArgument(
                f"{len(request.messages)} messages is over the limit of {self._settings.max_messages}"
            )
        messages = []
        total = 0
        for index, message in enumerate(request.messages):
            role = _ROLES.get(message.role)
            if role is None:
                raise InvalidArgument(
                    f"messages[{index}].role is not set: use ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"
                )
            if not message.text.strip() and not message.audio_tokens:
                raise InvalidArgument(f"messages[{index}] is empty: set text or audio_tokens")
            if message.audio_tokens and not self._engine.info.supports_audio_tokens:
                raise FailedPrecondition(
                    f"messages[{index}] carries audio tokens, which the {self._engine.info.name} engine does not read; "
                    "send the transcript as text"
                )
            total += len(message.text) + len(message.audio_tokens)
            messages.append(Message(role, message.text, message.audio_tokens))
        if total > self._settings.max_input_chars:
            raise InvalidArgument(f"messages hold {total} characters; the limit is {self._settings.max_input_chars}")
        return messages

    async def Generate(
        self, request: chat_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.GenerateResponse]:
        started = time.perf_counter()
        messages = self._messages(request)
        sampling = resolve_sampling(request.sampling, self._engine.info.default_sampling)
        usage = Usage()
        first_token = 0.0
        deltas = self._engine.generate(messages, sampling, usage)
        try:
            async for delta in deltas:
                if not first_token:
                    first_token = time.perf_counter() - started
                yield chat_pb2.GenerateResponse(text_delta=delta)
        finally:
            await deltas.aclose()
        yield chat_pb2.GenerateResponse(
            summary=chat_pb2.GenerateSummary(
                finish_reason=_FINISH.get(usage.finish_reason, chat_pb2.FINISH_REASON_UNSPECIFIED),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                time_to_first_token_seconds=first_token,
                total_seconds=time.perf_counter() - started,
            )
        )

    async def GetEngineInfo(
        self, request: chat_pb2.GetEngineInfoRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.GetEngineInfoResponse:
        info = self._engine.info
        return chat_pb2.GetEngineInfoResponse(
            engine=info.name,
            model=info.model,
            supports_audio_tokens=info.supports_audio_tokens,
            max_context_tokens=info.max_context_tokens,
        )
