"""Trace context across a real gRPC call: the gateway's stage client (``Stage``) and the shared server interceptor,
in one process with an in-memory exporter; and tracing off costs nothing (no OpenTelemetry module is loaded)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc

from services.common import tracing
from services.gateway.settings import GatewaySettings
from services.gateway.stages import Stage, StageError
from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings
from tests.conftest import serving
from tests.fakes import FakeTtsEngine
from tools.cluster import ROOT

TTS_SERVICE = "stepaudio.tts.v1.TtsService"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()


async def test_a_stage_call_carries_its_trace_context_to_the_stage(spans: InMemorySpanExporter) -> None:
    settings = TtsSettings()
    servicer = TtsServicer(FakeTtsEngine(), settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, TTS_SERVICE) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stage = Stage("tts", TTS_SERVICE, address, channel, tts_pb2_grpc.TtsServiceStub(channel), 5.0)

            async def calls() -> tts_pb2.ListVoicesResponse:  # as the gateway's turn makes them
                voices = await stage.unary("ListVoices", tts_pb2.ListVoicesRequest(), 5.0, (("x-request-id", "r1"),))
                with pytest.raises(StageError) as failure:
                    request = tts_pb2.SynthesizeRequest(text="hi", voice_id="nobody")
                    async for _ in stage.stream("Synthesize", request, 5.0, (("x-request-id", "r2"),)):
                        pass
                assert failure.value.code == grpc.StatusCode.NOT_FOUND
                return voices

            with tracing.span("turn") as turn:
                voices = await asyncio.create_task(calls(), context=tracing.context_with(turn))
    assert [voice.voice_id for voice in voices.voices] == ["fake-en", "fake-zh"]

    by_key = {(span.name, span.kind): span for span in spans.get_finished_spans()}
    trace_id = turn.get_span_context().trace_id
    for method, request_id in (("ListVoices", "r1"), ("Synthesize", "r2")):
        client = by_key[f"{TTS_SERVICE}/{method}", SpanKind.CLIENT]
        server = by_key[f"{TTS_SERVICE}/{method}", SpanKind.SERVER]
        assert client.context.trace_id == server.context.trace_id == trace_id
        assert client.parent.span_id == turn.get_span_context().span_id
        assert server.parent.span_id == client.context.span_id  # the traceparent went over the wire
        assert server.parent.is_remote
        assert server.attributes["rpc.method"] == client.attributes["rpc.method"] == method
        assert server.attributes["rpc.service"] == TTS_SERVICE
        assert server.attributes["request_id"] == request_id
        assert client.attributes["server.address"] == address

    ok_client, ok_server = (
        by_key[f"{TTS_SERVICE}/ListVoices", SpanKind.CLIENT],
        by_key[f"{TTS_SERVICE}/ListVoices", SpanKind.SERVER],
    )
    assert ok_client.attributes["rpc.grpc.status_code"] == ok_server.attributes["rpc.grpc.status_code"] == 0
    assert ok_client.status.status_code == ok_server.status.status_code == StatusCode.UNSET
    # NOT_FOUND: the caller's mistake, an error of the client span only (OpenTelemetry's gRPC conventions).
    failed_client = by_key[f"{TTS_SERVICE}/Synthesize", SpanKind.CLIENT]
    failed_server = by_key[f"{TTS_SERVICE}/Synthesize", SpanKind.SERVER]
    assert failed_client.attributes["rpc.grpc.status_code"] == failed_server.attributes["rpc.grpc.status_code"] == 5
    assert failed_client.status.status_code == StatusCode.ERROR
    assert "nobody" in failed_client.status.description
    assert failed_server.status.status_code == StatusCode.UNSET


async def test_a_server_span_continues_the_callers_trace_and_honours_its_sampling_flag(
    spans: InMemorySpanExporter,
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    settings = TtsSettings()
    servicer = TtsServicer(FakeTtsEngine(), settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, TTS_SERVICE) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tts_pb2_grpc.TtsServiceStub(channel)
            await stub.ListVoices(
                tts_pb2.ListVoicesRequest(), metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),)
            )
            unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
            await stub.ListVoices(tts_pb2.ListVoicesRequest(), metadata=(("traceparent", unsampled),))
            await stub.ListVoices(tts_pb2.ListVoicesRequest())  # no context: a new trace
    first, fresh = spans.get_finished_spans()  # the unsampled call recorded nothing
    assert f"{first.context.trace_id:032x}" == trace_id
    assert f"{first.parent.span_id:016x}" == parent_id
    assert first.kind == SpanKind.SERVER
    assert fresh.parent is None and fresh.context.trace_id not in (first.context.trace_id, int(unsampled[3:35], 16))


def test_tracing_off_loads_no_opentelemetry_module_and_on_without_it_fails_clearly() -> None:
    """In a fresh interpreter: the services' modules, settings and hooks with tracing off import nothing of
    OpenTelemetry (the chat service's vLLM environment need not have it); on without the SDK, start-up stops with a
    message that names the setting and the packages."""
    script = """
import asyncio, sys
import services.gateway.__main__, services.chat.__main__, services.common.server
from services.common import tracing
from services.gateway.settings import GatewaySettings
assert tracing.configure("gateway", GatewaySettings()) is False
with tracing.span("turn") as span, tracing.client_call("a.B/C", "x:1") as call:
    assert span is None and call.metadata((("k", "v"),)) == (("k", "v"),)
assert tracing.server_span("/a.B/C", {}, "id") is None
asyncio.run(tracing.shutdown())
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
assert not loaded, loaded
sys.modules["opentelemetry.sdk"] = None  # as if the SDK were not installed
try:
    tracing.configure("gateway", GatewaySettings(otlp_endpoint="http://127.0.0.1:4317"))
except RuntimeError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "OTLP_ENDPOINT is set (http://127.0.0.1:4317)" in result.stdout
    assert "opentelemetry-sdk" in result.stdout


async def test_shutdown_does_not_wait_long_for_a_collector_that_is_down() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert tracing.configure("gateway", GatewaySettings(otlp_endpoint=f"http://127.0.0.1:{port}"))
    try:
        with tracing.span("turn") as turn:
            assert turn is not None and turn.get_span_context().is_valid
    finally:
        started = time.monotonic()
        await tracing.shutdown(limit=0.5)
    assert time.monotonic() - started < 1.5  # the SDK alone retries for up to 30 s
    with tracing.span("turn") as turn:
        assert turn is None  # off again
