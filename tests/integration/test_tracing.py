"""Tracing across real processes: the four services (synthetic engines, docs/synthetic.md) export their spans over
OTLP/gRPC to a trace receiver that this test runs (the collector's TraceService, keeping spans in memory). One Chat
turn is one trace holding the spans of every process it went through, linked gateway server span → gateway client
span per stage call → that stage's server span, with the turn's "first token" and "first audio" events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from stepaudio.common.v1 import audio_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from tools.cluster import LocalCluster

pytestmark = pytest.mark.integration

SERVICES = ("gateway", "tokenizer", "chat", "tts")
GATEWAY = "stepaudio.gateway.v1.GatewayService"
SERVER, CLIENT, INTERNAL = (
    trace_pb2.Span.SPAN_KIND_SERVER,
    trace_pb2.Span.SPAN_KIND_CLIENT,
    trace_pb2.Span.SPAN_KIND_INTERNAL,
)
RATE = 16000
PCM16 = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=RATE, channels=1)


@dataclass(frozen=True)
class Received:
    service: str  # the resource's service.name
    span: trace_pb2.Span

    @property
    def id(self) -> bytes:
        return self.span.span_id

    @property
    def parent(self) -> bytes:
        return self.span.parent_span_id

    def attribute(self, key: str) -> object:
        for kv in self.span.attributes:
            if kv.key == key:
                return getattr(kv.value, kv.value.WhichOneof("value"))
        raise KeyError(key)


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """What an OpenTelemetry collector's OTLP/gRPC receiver does, minus the pipeline: keeps every span."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Received] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext):
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self._spans += [Received(attributes["service.name"], span) for span in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Received]:
        with self._lock:
            return list(self._spans)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[TraceReceiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    collector = TraceReceiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, port
    server.stop(0)


@pytest.fixture(scope="module")
def cluster(receiver: tuple[TraceReceiver, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    run_dir: Path = tmp_path_factory.mktemp("tracing")
    endpoint = f"http://127.0.0.1:{receiver[1]}"
    env = {
        "TOKENIZER_ENGINE": "synthetic",
        "CHAT_ENGINE": "synthetic",
        "TTS_ENGINE": "synthetic",
        "CHAT_SYNTHETIC_REPLY_WORDS": "12",
        "TTS_REGISTRY_DIR": str(run_dir / "voices"),
        "GATEWAY_VOICE_EN": "synthetic-en",
        "GATEWAY_VOICE_ZH": "synthetic-zh",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 0.1 s instead of 5 s: the test waits less
    }
    for service in SERVICES:
        env[f"{service.upper()}_OTLP_ENDPOINT"] = endpoint
    cluster = LocalCluster(run_dir, env=env)
    cluster.start(timeout=120)
    yield cluster
    codes = cluster.stop()
    assert codes == dict.fromkeys(SERVICES, 0), "a service did not shut down cleanly"


async def chat(cluster: LocalCluster, request: gateway_pb2.ChatRequest) -> gateway_pb2.TurnSummary:
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        responses = [r async for r in gateway_pb2_grpc.GatewayServiceStub(channel).Chat(request, timeout=30)]
    assert any(r.HasField("audio") for r in responses)
    return responses[-1].summary


def the_trace(
    receiver: TraceReceiver, request_id: str, services: set[str], rpc: str = "Chat", within: float = 15.0
) -> list[Received]:
    """The spans of the trace whose gateway ``rpc`` span served ``request_id``, once spans of every one of
    ``services`` have arrived (each process exports on its own schedule)."""
    deadline = time.monotonic() + within
    spans: list[Received] = []
    while time.monotonic() < deadline:
        everything = receiver.spans()
        roots = [
            s
            for s in everything
            if s.span.name == f"{GATEWAY}/{rpc}" and s.span.kind == SERVER and s.attribute("request_id") == request_id
        ]
        if roots:
            spans = [s for s in everything if s.span.trace_id == roots[0].span.trace_id]
            if {f"stepaudio-{name}" for name in services} <= {s.service for s in spans}:
                time.sleep(0.5)  # the rest of the stragglers (one more batch per process)
                return [s for s in receiver.spans() if s.span.trace_id == roots[0].span.trace_id]
        time.sleep(0.1)
    raise AssertionError(f"no complete trace for request {request_id} within {within} s; got {spans}")


def check_links(spans: list[Received], stage_calls: set[str], rpc: str = "Chat") -> tuple[Received, Received]:
    """One root (the gateway's ``rpc`` server span), every other span reached from it through parent links; each stage
    call a gateway client span whose child is the stage's server span of the same method. Returns (root, turn)."""
    by_id = {s.id: s for s in spans}
    assert len(by_id) == len(spans), "span ids repeat"
    (root,) = [s for s in spans if not s.parent]
    assert (root.service, root.span.name, root.span.kind) == ("stepaudio-gateway", f"{GATEWAY}/{rpc}", SERVER)
    for span in spans:
        seen = span
        while seen.parent:
            assert seen.parent in by_id, f"{span.service} {span.span.name}: its parent is not in the trace"
            seen = by_id[seen.parent]
        assert seen is root
        assert span.span.status.code != trace_pb2.Status.STATUS_CODE_ERROR, span

    (turn,) = [s for s in spans if s.span.name == "turn"]
    assert (turn.service, turn.span.kind, turn.parent) == ("stepaudio-gateway", INTERNAL, root.id)

    clients = [s for s in spans if s.span.kind == CLIENT]
    servers = [s for s in spans if s.span.kind == SERVER and s is not root]
    assert {s.service for s in clients} == {"stepaudio-gateway"}
    assert {s.span.name.rsplit("/", 1)[-1] for s in clients} >= stage_calls
    for server in servers:  # a stage's server span hangs under the gateway's client span of the same call
        client = by_id[server.parent]
        assert client.span.kind == CLIENT and client.span.name == server.span.name
        stage = server.span.name.split(".")[1]  # stepaudio.<stage>.v1.<Service>/<Method>
        assert server.service == f"stepaudio-{stage}"
        assert server.attribute("rpc.grpc.status_code") == client.attribute("rpc.grpc.status_code") == 0
    assert {s.parent for s in servers} == {s.id for s in clients}, "a stage call left no span in the stage"
    # The reply's calls are made inside the turn (other Generate calls may come before it: an emotion reading).
    assert any(s.parent == turn.id for s in clients if s.span.name.endswith("/Generate"))
    assert all(s.parent == turn.id for s in clients if s.span.name.endswith("/Synthesize"))
    return root, turn


def event(span: Received, name: str) -> dict[str, object]:
    (found,) = [e for e in span.span.events if e.name == name]
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in found.attributes}


async def test_a_text_turn_is_one_trace_across_gateway_chat_and_tts(
    cluster: LocalCluster, receiver: tuple[TraceReceiver, int]
) -> None:
    summary = await chat(cluster, gateway_pb2.ChatRequest(input=gateway_pb2.TurnInput(text="Tell me about the sea.")))
    spans = the_trace(receiver[0], summary.request_id, {"gateway", "chat", "tts"})
    assert "stepaudio-tokenizer" not in {s.service for s in spans}  # text in: the tokenizer has no part in it
    root, turn = check_links(spans, {"Generate", "Synthesize"})
    assert event(turn, "first token")["seconds"] == pytest.approx(summary.latency.first_text_seconds)
    assert event(turn, "first audio")["seconds"] == pytest.approx(summary.latency.first_audio_seconds)
    assert root.span.start_time_unix_nano <= turn.span.start_time_unix_nano
    assert turn.span.end_time_unix_nano <= root.span.end_time_unix_nano


def speech(seconds: float) -> bytes:
    """A tone loud enough for the synthetic tokenizer's VAD (16 kHz PCM16)."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


async def test_a_spoken_turn_is_one_trace_across_all_four_services(
    cluster: LocalCluster, receiver: tuple[TraceReceiver, int]
) -> None:
    audio = audio_pb2.Audio(format=PCM16, content=speech(1.0))
    summary = await chat(cluster, gateway_pb2.ChatRequest(input=gateway_pb2.TurnInput(audio=audio)))
    assert summary.user_transcript.startswith("utterance 1 of")
    spans = the_trace(receiver[0], summary.request_id, set(SERVICES))
    assert {s.service for s in spans} == {f"stepaudio-{name}" for name in SERVICES}
    root, turn = check_links(spans, {"Tokenize", "Generate", "Synthesize"})
    (tokenize,) = [s for s in spans if s.span.name.endswith("TokenizerService/Tokenize") and s.span.kind == CLIENT]
    assert tokenize.parent == root.id  # before the reply: a call of the Chat RPC itself
    assert event(turn, "first audio")["seconds"] == pytest.approx(summary.latency.first_audio_seconds)

    other_traces = {s.span.trace_id for s in receiver[0].spans() if s.span.name == f"{GATEWAY}/Chat"}
    assert len(other_traces) >= 2 and root.span.trace_id in other_traces  # one trace per turn, not one per process


async def test_a_conversation_is_one_trace_with_a_turn_span_per_reply(
    cluster: LocalCluster, receiver: tuple[TraceReceiver, int]
) -> None:
    """StreamingChat: the stream is one trace (its tokenizer stream lives as long); each reply is a "turn" span."""
    replied = asyncio.Event()

    async def microphone() -> AsyncIterator[gateway_pb2.StreamingChatRequest]:
        yield gateway_pb2.StreamingChatRequest(config=gateway_pb2.StreamingChatConfig(input_format=PCM16))
        yield gateway_pb2.StreamingChatRequest(audio_content=speech(1.0))
        while not replied.is_set():  # silence, at real-time pace, until the reply is over
            yield gateway_pb2.StreamingChatRequest(audio_content=bytes(2 * RATE // 10))
            await asyncio.sleep(0.1)

    summaries = []
    async with grpc.aio.insecure_channel(cluster.gateway_address) as channel:
        async for response in gateway_pb2_grpc.GatewayServiceStub(channel).StreamingChat(microphone(), timeout=30):
            if response.HasField("summary"):
                summaries.append(response.summary)
                replied.set()
    (summary,) = summaries
    spans = the_trace(receiver[0], summary.request_id, set(SERVICES), rpc="StreamingChat")
    root, turn = check_links(spans, {"StreamingTokenize", "Generate", "Synthesize"}, rpc="StreamingChat")
    (listen,) = [s for s in spans if s.span.name.endswith("/StreamingTokenize") and s.span.kind == CLIENT]
    assert listen.parent == root.id
    assert event(turn, "first audio")["seconds"] == pytest.approx(summary.latency.first_audio_seconds)
