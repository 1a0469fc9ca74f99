"""Clients of the three stage services: one long-lived channel each, a bounded wait for a stage that is (re)starting,
and stage failures reported with the stage's name.

Every stage call goes through ``Stage.unary`` or ``Stage.stream``:
- before the call, the stage must be reachable; a stage that is not (down, restarting) is waited for at most
  ``stage_connect_timeout_seconds``, then the call gets UNAVAILABLE naming it. A stage that was seen up during
  the current Chat/StreamingChat and is now unreachable fails the call at once (it died mid-call, like a call in
  flight when it died);
- a stage's status for a caller's mistake (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED...) passes through with
  its message; a stage that went away is UNAVAILABLE, one that ran out of time DEADLINE_EXCEEDED, both naming the
  stage and its address;
- when tracing is on, the call (wait included) is a client span whose ``traceparent`` goes along in the metadata.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import grpc
from stepaudio.chat.v1 import chat_pb2_grpc
from stepaudio.tokenizer.v1 import tokenizer_pb2_grpc
from stepaudio.tts.v1 import tts_pb2_grpc

from services.common import tracing
from services.common.errors import DeadlineExceeded, DomainError, Unavailable
from services.gateway.settings import GatewaySettings

Metadata = tuple[tuple[str, str], ...]

# When the gateway call being served began (see ``begin_call``); a stage seen up since then and unreachable now
# went away during this call. Unset: the call only ever waits for a stage.
_call_started: ContextVar[float] = ContextVar("stage_call_started", default=math.inf)

# A stage that closed its end (killed, restarting, shutting down): the gateway's own cancellation is an
# asyncio.CancelledError, so CANCELLED here came from the stage.
_STAGE_WENT_AWAY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
# A fault of the stage itself rather than of the request: named, code kept (INTERNAL is logged with a traceback).
_STAGE_FAULT = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}


def begin_call() -> None:
    """Mark the start of a gateway call that makes several stage calls over its life (Chat, StreamingChat)."""
    _call_started.set(time.monotonic())


class StageError(DomainError):
    """A stage's status, passed on to the client with the same code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _service_config(service: str) -> str:
    # Retries only where they are safe: unary calls, on UNAVAILABLE (stage restarting).
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [
                        {"service": service, "method": "Tokenize"},
                        {"service": service, "method": "ListVoices"},
                        {"service": service, "method": "GetEngineInfo"},
                    ],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def channel_options(service: str, settings: GatewaySettings) -> list[tuple[str, Any]]:
    backoff_ms = int(settings.stage_reconnect_backoff_seconds * 1000)
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", _service_config(service)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.lb_policy_name", "round_robin"),
        # gRPC's defaults (1 s, growing to 2 min) leave a restarted stage unused for up to minutes.
        ("grpc.initial_reconnect_backoff_ms", min(100, backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
        # How long one connection attempt may take (gRPC: 20 s), for a stage that does not answer at all: about as
        # long as a call waits for it.
        ("grpc.min_reconnect_backoff_ms", max(1000, int(settings.stage_connect_timeout_seconds * 1000))),
    ]
    if settings.stage_keepalive_seconds:
        options += [
            ("grpc.keepalive_time_ms", int(settings.stage_keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(settings.stage_keepalive_timeout_seconds * 1000)),
        ]
    return options


class Stage:
    """One stage service as the gateway calls it; see the module docstring for the policy."""

    def __init__(
        self, name: str, service: str, address: str, channel: grpc.aio.Channel, stub: object, connect_timeout: float
    ) -> None:
        self.name = name
        self.service = service  # package.Service
        self.address = address
        self._channel = channel
        self._stub = stub
        self._connect_timeout = connect_timeout
        self._seen_ready = -math.inf  # monotonic time a call last found the stage reachable

    async def unary(self, method: str, request: object, timeout: float, metadata: Metadata = ()) -> Any:
        deadline = time.monotonic() + timeout
        with tracing.client_call(f"{self.service}/{method}", self.address) as traced:
            await self._reachable(timeout)
            try:
                return await getattr(self._stub, method)(
                    request, timeout=_left(deadline), metadata=traced.metadata(metadata)
                )
            except grpc.aio.AioRpcError as error:
                raise self._failure(error, timeout) from None

    async def stream(self, method: str, request: object, timeout: float, metadata: Metadata = ()) -> AsyncIterator:
        """A response-streaming call; ``request`` is a message or (stream → stream) an async iterator of them."""
        deadline = time.monotonic() + timeout
        with tracing.client_call(f"{self.service}/{method}", self.address) as traced:
            await self._reachable(timeout)
            call = getattr(self._stub, method)(request, timeout=_left(deadline), metadata=traced.metadata(metadata))
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as error:
                raise self._failure(error, timeout) from None
            finally:
                call.cancel()  # no-op once finished; stops the stage's work when the caller stops early

    async def _reachable(self, timeout: float) -> None:
        state = self._channel.get_state(try_to_connect=True)
        if state is not grpc.ChannelConnectivity.READY:
            await self._wait_until_ready(state, min(self._connect_timeout, timeout))
        self._seen_ready = time.monotonic()

    async def _wait_until_ready(self, state: grpc.ChannelConnectivity, budget: float) -> None:
        try:
            async with asyncio.timeout(budget):
                while state is not grpc.ChannelConnectivity.READY:
                    self._fail_fast(state)
                    await self._channel.wait_for_state_change(state)
                    state = self._channel.get_state(try_to_connect=True)
        except TimeoutError:
            if budget < self._connect_timeout:
                raise DeadlineExceeded(
                    f"the {self.name} stage ({self.address}) could not be reached before the deadline"
                ) from None
            raise self._unavailable(f"not reachable for {seconds(budget)} s") from None

    def _fail_fast(self, state: grpc.ChannelConnectivity) -> None:
        if state is grpc.ChannelConnectivity.SHUTDOWN:
            raise self._unavailable("the gateway is shutting down")
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE and self._seen_ready >= _call_started.get():
            raise self._unavailable("its connection was lost during this call")

    def _unavailable(self, reason: str) -> Unavailable:
        return Unavailable(f"the {self.name} stage ({self.address}) is unavailable: {reason}; retry")

    def _failure(self, error: grpc.aio.AioRpcError, timeout: float) -> DomainError:
        code, details = error.code(), error.details() or error.code().name
        if code in _STAGE_WENT_AWAY:
            return self._unavailable(details)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            late = f"the {self.name} stage ({self.address}) did not answer within {seconds(timeout)} s"
            return DeadlineExceeded(late)
        if code in _STAGE_FAULT:
            return StageError(code, f"the {self.name} stage ({self.address}) failed: {details}")
        return StageError(code, details)  # the caller's mistake, in the stage's words


def seconds(value: float) -> str:
    """``value`` for a message: 120, 0.5, 119.99."""
    return f"{round(value, 2):g}"


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


class Stages:
    """One channel per stage; channels are long-lived and shared by all calls."""

    def __init__(self, settings: GatewaySettings) -> None:
        specs = [
            ("tokenizer", settings.tokenizer_address, "stepaudio.tokenizer.v1.TokenizerService",
             tokenizer_pb2_grpc.TokenizerServiceStub),
            ("chat", settings.chat_address, "stepaudio.chat.v1.ChatService", chat_pb2_grpc.ChatServiceStub),
            ("tts", settings.tts_address, "stepaudio.tts.v1.TtsService", tts_pb2_grpc.TtsServiceStub),
        ]  # fmt: skip
        self._channels: list[grpc.aio.Channel] = []
        stages = []
        for name, address, service, stub in specs:
            channel = grpc.aio.insecure_channel(address, options=channel_options(service, settings))
            self._channels.append(channel)
            stages.append(Stage(name, service, address, channel, stub(channel), settings.stage_connect_timeout_seconds))
        self.tokenizer, self.chat, self.tts = stages

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
