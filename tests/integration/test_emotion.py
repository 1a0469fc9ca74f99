"""The user's emotion on the embedded profile (real processes, real recording): no engine there can tell, so the
transcript and the TurnSummary say "not detected", and the empathetic reply mode leaves the reply as requested."""

from __future__ import annotations

from pathlib import Path

import pytest
from stepaudio.common.v1 import speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio_client.client import GatewayClient, wav_audio

from tools.cluster import LocalCluster

pytestmark = pytest.mark.integration

NOT_DETECTED = speech_pb2.DetectedEmotion()  # SPEAKER_EMOTION_UNSPECIFIED, no confidence, no engine


async def test_the_embedded_profile_reports_the_emotion_as_not_detected(
    cluster: LocalCluster, shared_data: Path
) -> None:
    audio = wav_audio((shared_data / "Tingting_prompt.wav").read_bytes())
    async with GatewayClient(cluster.gateway_address) as client:
        transcribed = await client.transcribe(audio)
        assert transcribed.transcript.text and transcribed.transcript.emotion == NOT_DETECTED
        result = await client.chat(
            audio=audio,
            sampling=speech_pb2.SamplingParams(temperature=0.0, seed=1, max_tokens=16),
            reply_mode=gateway_pb2.REPLY_MODE_EMPATHETIC,
            timeout=180,
        )
    assert result.user_transcript and result.user_emotion == NOT_DETECTED
    assert result.summary.user_emotion == NOT_DETECTED
    assert result.summary.reply_emotion == speech_pb2.EMOTION_UNSPECIFIED
    assert result.reply_text and len(result.pcm) > 0  # the embedded voices (no emotion control) still speak
