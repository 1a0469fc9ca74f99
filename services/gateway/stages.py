"""Clients of the three stage services, with retry/timeout policy as gRPC service config."""

from __future__ import annotations

import json

import grpc
from stepaudio.chat.v1 import chat_pb2_grpc
from stepaudio.tokenizer.v1 import tokenizer_pb2_grpc
from stepaudio.tts.v1 import tts_pb2_grpc

from services.gateway.settings import GatewaySettings


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


def _channel(address: str, service: str, max_message_bytes: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.service_config", _service_config(service)),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.lb_policy_name", "round_robin"),
        ],
    )


class Stages:
    """One channel and stub per stage; channels are long-lived and shared by all calls."""

    def __init__(self, settings: GatewaySettings) -> None:
        limit = settings.max_message_bytes
        self._channels = [
            _channel(settings.tokenizer_address, "stepaudio.tokenizer.v1.TokenizerService", limit),
            _channel(settings.chat_address, "stepaudio.chat.v1.ChatService", limit),
            _channel(settings.tts_address, "stepaudio.tts.v1.TtsService", limit),
        ]
        self.tokenizer = tokenizer_pb2_grpc.TokenizerServiceStub(self._channels[0])
        self.chat = chat_pb2_grpc.ChatServiceStub(self._channels[1])
        self.tts = tts_pb2_grpc.TtsServiceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
