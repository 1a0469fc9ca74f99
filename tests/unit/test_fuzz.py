"""Property-based fuzzing of every public (gateway) and stage (tokenizer, chat, tts) RPC.

The four services run in-process with the production interceptor and servicers: the stages over the fake engines
of ``tests/fakes.py`` (the TTS one cloning voices into a real registry), the gateway in front of them. Requests are
drawn from the message descriptors (``tests/protofuzz.py``), with hints that make some of them valid enough to
reach the engines, and are sent as bytes on the raw channel, together with bytes that are no valid encoding at all.
Streaming RPCs get sequences of messages. After every case:

* the status is a documented one: never UNKNOWN or INTERNAL, and with every stage up and no deadline pressure,
  never UNAVAILABLE or DEADLINE_EXCEEDED either;
* a request that does not decode is INVALID_ARGUMENT saying so; OK responses decode as the response type;
* every service still answers its health check SERVING, and nothing was logged at ERROR or above.

``STEPAUDIO_FUZZ_EXAMPLES`` is the number of cases over the whole suite (default 1,200, derandomized: the same
cases on every run); ``make fuzz`` sets it to 12,000 and draws new cases each run.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile
from google.protobuf import descriptor as descriptors
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc

from services.chat.servicer import ChatServicer
from services.chat.settings import ChatSettings
from services.common.server import RPC_HANDLED, ServiceDefinition, build_server, set_serving
from services.gateway.servicer import GatewayServicer
from services.gateway.sessions import SessionStore
from services.gateway.settings import GatewaySettings
from services.gateway.stages import Stages
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import TokenizerSettings
from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings
from services.tts.voices import VoiceRegistry
from tests.fakes import FakeChatEngine, FakeCloningTtsEngine, FakeTokenizerEngine
from tests.protofuzz import MessageStrategies, malformed, mutated, mutated_stream, unknown_fields
from tests.unit.tts.test_voices import TOKENS, builtin_dir, prompt_wav

SERVICES = {
    "gateway": gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    "tokenizer": tokenizer_pb2.DESCRIPTOR.services_by_name["TokenizerService"],
    "chat": chat_pb2.DESCRIPTOR.services_by_name["ChatService"],
    "tts": tts_pb2.DESCRIPTOR.services_by_name["TtsService"],
}
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
CALL_TIMEOUT = 30.0  # far above what any case takes: a case that needs it has hung


@dataclass(frozen=True)
class Rpc:
    stage: str
    method: descriptors.MethodDescriptor

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def request(self) -> descriptors.Descriptor:
        return self.method.input_type

    def describe(self, payloads: list[bytes]) -> str:
        """The case, short enough for an assertion message."""
        parts = []
        for payload in payloads:
            try:
                message = GetMessageClass(self.request).FromString(payload)
            except DecodeError:
                parts.append(f"<{len(payload)} undecodable bytes>")
            else:
                text = text_format.MessageToString(message, as_one_line=True)
                parts.append(text if len(text) <= 300 else f"{text[:300]}… ({len(payload)} bytes)")
        return " | ".join(parts)

    def decodes(self, payload: bytes) -> bool:
        try:
            GetMessageClass(self.request).FromString(payload)
        except DecodeError:
            return False
        return True


RPCS = [Rpc(stage, method) for stage, service in SERVICES.items() for method in service.methods]
TOTAL_EXAMPLES = int(os.environ.get("STEPAUDIO_FUZZ_EXAMPLES", "1200"))
EXAMPLES_PER_TEST = math.ceil(TOTAL_EXAMPLES / (2 * len(RPCS)))  # two tests per RPC: messages and raw bytes
settings.register_profile(
    "ci",
    max_examples=EXAMPLES_PER_TEST,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
settings.register_profile("fuzz", settings.get_profile("ci"), derandomize=False)
PROFILE = settings.get_profile("fuzz" if "STEPAUDIO_FUZZ_EXAMPLES" in os.environ else "ci")


# --- audio the hints offer ---------------------------------------------------------------------------------------


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    samples = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)
    return np.repeat(samples[:, None], channels, axis=1).astype(np.float32) if channels > 1 else samples


def _file(samples: np.ndarray, rate: int, kind: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=kind, subtype=subtype)
    return buffer.getvalue()


def _pcm16(samples: np.ndarray) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def _audio_hints() -> list[bytes]:
    wav = _file(_tone(0.5, 16000), 16000)
    nan_wav = _file(np.full(800, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    return [
        b"",
        _pcm16(_tone(0.3, 16000)),  # speech to the fake tokenizer (non-zero samples)…
        bytes(3200),  # …and silence, which ends an utterance
        _pcm16(_tone(0.3, 16000)) + b"\x01",  # not whole frames
        wav,
        wav[:44],  # a header without data
        wav[:-101],  # cut mid-stream
        wav[:40] + b"\xff\xff\xff\x7f" + wav[44:],  # a data chunk that claims 2 GiB
        b"RIFF" + bytes(40),
        _file(_tone(0.5, 16000, channels=2), 16000),
        _file(_tone(0.5, 16000, channels=3), 16000),
        _file(_tone(0.2, 96000), 96000),
        _file(_tone(0.5, 4000), 4000),
        _file(_tone(0.5, 16000), 16000, kind="FLAC"),
        nan_wav,
        prompt_wav(),  # a good voice-cloning prompt (4 s at 24 kHz)
        _file(_tone(61.0, 8000), 8000),  # over the gateway's 60 s limit
    ]


TRANSCRIPT = "叫做秋风起蟹脚痒，啊，什么意思呢？"
LANGUAGES = ["", "en", "zh", "zh-CN", "en-US", "ja", "ZH", "en_US", "zh-sichuan", "yue", "fr", "xx", "e", "en-"]


def hints(session_id: str) -> dict[str, st.SearchStrategy]:
    """Values that pass the first validation step, and near misses, by field name."""
    audio = st.sampled_from(_audio_hints())
    return {
        "text": st.sampled_from(["Hello there.", "你好。", "(RAP)yo", "（高兴1）hi", "(慢速1)hello", "Hi! " * 600]),
        "voice_id": st.sampled_from(["", "Tingting", "tingting", "nobody", "Tingting\n", "fuzz-voice", "x" * 65]),
        "session_id": st.sampled_from([session_id, session_id + "\n", session_id.upper(), "0" * 32]),
        "language": st.sampled_from(LANGUAGES),
        "language_codes": st.sampled_from(LANGUAGES),
        "transcript": st.just(TRANSCRIPT),
        "display_name": st.sampled_from(["Fuzz", "于谦", "x" * 101]),
        "prompt_tokens": st.sampled_from([*TOKENS, 65536 + 5119, 65536 + 5120, 65535]),
        "audio_tokens": st.sampled_from(["<audio_1><audio_1025>", "<audio_99999>", "<audio_1> junk"]),
        "system_prompt": st.sampled_from(["You are a helpful assistant.", "s" * 100_000]),
        "sample_rate_hz": st.sampled_from([0, 8000, 16000, 24000, 44100, 48000, 7999, 48001, -16000]),
        "channels": st.sampled_from([0, 1, 2, 3, -1]),
        "content": audio,
        "audio_content": audio,
        "emit_transcript": st.just(True),
    }


# --- the services, on an event loop in a thread of their own ------------------------------------------------------


class ServiceThread:
    """Runs the services and the client calls on one event loop in a background thread, so that the Hypothesis
    tests themselves stay synchronous (``run`` waits for a coroutine's result)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-services", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine, timeout: float = CALL_TIMEOUT + 30) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[bytes]


class Cluster:
    """The four services on 127.0.0.1 (fake engines), raw channels to each, and their health checks."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._servers: list[grpc.aio.Server] = []
        self.channels: dict[str, grpc.aio.Channel] = {}

    async def _serve(self, name: str, settings: object, add: object, servicer: object) -> str:
        service = SERVICES[name].full_name
        definition = ServiceDefinition(
            name=name, settings=settings, register=lambda server: add(servicer, server), service_names=[service]
        )
        server, port = build_server(definition)
        await server.start()
        await set_serving(definition, True)
        self._servers.append(server)
        address = f"127.0.0.1:{port}"
        self.channels[name] = grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)])
        return address

    async def start(self) -> None:
        registry = VoiceRegistry.open(builtin_dir(self._root / "builtin"), self._root / "registry")
        stages = [
            ("tokenizer", TokenizerSettings(), tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server,
             lambda s: TokenizerServicer(FakeTokenizerEngine(), s)),
            ("chat", ChatSettings(), chat_pb2_grpc.add_ChatServiceServicer_to_server,
             lambda s: ChatServicer(FakeChatEngine(), s)),
            ("tts", TtsSettings(), tts_pb2_grpc.add_TtsServiceServicer_to_server,
             lambda s: TtsServicer(FakeCloningTtsEngine(registry), s)),
        ]  # fmt: skip
        addresses = {
            name: await self._serve(name, settings, add, make(settings)) for name, settings, add, make in stages
        }
        settings = GatewaySettings(
            tokenizer_address=addresses["tokenizer"],
            chat_address=addresses["chat"],
            tts_address=addresses["tts"],
            sessions_dir=str(self._root / "sessions"),
            voice_en="Tingting",
            voice_zh="Tingting",
            voice_ja="Tingting",
        )
        self.stages = Stages(settings)
        sessions = SessionStore(Path(settings.sessions_dir), settings.max_sessions)
        servicer = GatewayServicer(self.stages, sessions, settings)
        await self._serve("gateway", settings, gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer)

    async def stop(self) -> None:
        await self.stages.close()
        for channel in self.channels.values():
            await channel.close()
        for server in self._servers:
            await server.stop(0)

    async def exchange(self, rpc: Rpc, payloads: list[bytes]) -> Outcome:
        channel = self.channels[rpc.stage]
        method = rpc.method
        kind = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[method.client_streaming, method.server_streaming]
        handled_before = _handled(method.name)
        call = kind(rpc.path)(iter(payloads) if method.client_streaming else payloads[0], timeout=CALL_TIMEOUT)
        responses: list[bytes] = []
        try:
            if method.server_streaming:
                responses = [response async for response in call]
            else:
                responses = [await call]
        except grpc.aio.AioRpcError as error:
            if method.client_streaming and error.details() == CLIENT_WRITE_RACE:
                return Outcome(await _code_sent(method.name, handled_before), CLIENT_WRITE_RACE, responses)
            return Outcome(error.code(), error.details() or "", responses)
        return Outcome(grpc.StatusCode.OK, "", responses)

    async def create_session(self) -> str:
        stub = gateway_pb2_grpc.GatewayServiceStub(self.channels["gateway"])
        return (await stub.CreateSession(gateway_pb2.CreateSessionRequest())).session.session_id

    async def unhealthy(self) -> list[str]:
        answers = {}
        for name, channel in self.channels.items():
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            answers[name] = (await check).status
        return [name for name, status in answers.items() if status != health_pb2.HealthCheckResponse.SERVING]


# When a server ends a request-streaming call while the client is still writing, grpc's asyncio client can lose the
# status the server sent and report INTERNAL with this text instead (grpc.aio._call: a failed send sets it). The
# code the server did send is then read from its stepaudio_rpc_handled_total counter.
CLIENT_WRITE_RACE = "Internal error from Core"


def _handled(method: str) -> dict[str, float]:
    return {
        sample.labels["code"]: sample.value
        for metric in RPC_HANDLED.collect()
        for sample in metric.samples
        if sample.name == "stepaudio_rpc_handled_total" and sample.labels["method"] == method
    }


async def _code_sent(method: str, before: dict[str, float]) -> grpc.StatusCode:
    """The status a service recorded for its one call of ``method`` since ``before`` (it may record it a moment
    after the client has its answer)."""
    for _ in range(200):
        after = _handled(method)
        grown = [code for code, count in after.items() if count > before.get(code, 0.0)]
        if grown:
            assert len(grown) == 1, f"{method}: several calls ended at once ({grown})"
            return grpc.StatusCode[grown[0]]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{method}: the service recorded no status for the call")


class ErrorLog(logging.Handler):
    """Collects records at ERROR and above from any logger (servicers, grpc, asyncio)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Fuzzing:
    services: ServiceThread
    cluster: Cluster
    strategies: MessageStrategies
    seeds: dict[str, list]
    errors: ErrorLog

    def check(self, rpc: Rpc, payloads: list[bytes]) -> grpc.StatusCode:
        """Send one case, assert the properties of the module docstring, return the code answered."""
        self.errors.records.clear()
        outcome: Outcome = self.services.run(self.cluster.exchange(rpc, payloads))
        event(outcome.code.name)  # the mix of answers: pytest --hypothesis-show-statistics
        where = f"{rpc.name} answered {outcome.code.name}: {outcome.details!r} to {rpc.describe(payloads)}"
        assert outcome.code in DOCUMENTED, where
        undecodable = [index for index, payload in enumerate(payloads) if not rpc.decodes(payload)]
        if undecodable == [0] or (undecodable and not rpc.method.client_streaming):
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, where
            if outcome.details != CLIENT_WRITE_RACE:  # else only the code is known
                assert f"could not be decoded as {rpc.request.full_name}" in outcome.details, where
        if undecodable:
            assert outcome.code != grpc.StatusCode.OK, f"{rpc.name} read an undecodable message and answered OK"
        response_type = GetMessageClass(rpc.method.output_type)
        for response in outcome.responses:
            response_type.FromString(response)
        assert not self.services.run(self.cluster.unhealthy()), f"after {where}"
        logged = [f"{record.name}: {record.getMessage()}" for record in self.errors.records]
        assert not logged, f"after {where}: {logged}"
        return outcome.code


def seeds(kept_session: str, doomed_session: str) -> dict[str, list]:
    """Valid requests of each RPC (request sequences for streaming ones), the starting points of near misses.
    ``test_the_seed_requests_are_served`` checks that each is served OK."""
    gateway, tokenizer, chat, tts = gateway_pb2, tokenizer_pb2, chat_pb2, tts_pb2
    pcm16 = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000, channels=1)
    wav = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV)
    clip = audio_pb2.Audio(format=wav, content=_file(_tone(0.5, 16000), 16000))
    prompt = audio_pb2.Audio(format=wav, content=prompt_wav())
    speech, silence = _pcm16(_tone(0.3, 16000)), bytes(3200)
    sampling = speech_pb2.SamplingParams(temperature=0.5, top_p=0.9, top_k=20, max_tokens=32, repetition_penalty=1.1)
    text = gateway.TurnInput(text="Hello there.")
    return {
        "gateway.Chat": [
            gateway.ChatRequest(input=text, voice_id="Tingting", sampling=sampling, sample_rate_hz=24000),
            gateway.ChatRequest(input=gateway.TurnInput(audio=clip), session_id=kept_session, text_only=True),
            gateway.ChatRequest(input=text, controls=speech_pb2.VoiceControls(speed=1.2), system_prompt="Be brief."),
        ],
        "gateway.Synthesize": [
            gateway.SynthesizeRequest(
                text="你好。", voice_id="Tingting", controls=speech_pb2.VoiceControls(emotion=speech_pb2.EMOTION_HAPPY)
            )
        ],
        "gateway.Transcribe": [gateway.TranscribeRequest(audio=clip, language="en")],
        "gateway.ListVoices": [gateway.ListVoicesRequest(language="zh")],
        "gateway.RegisterVoice": [
            gateway.RegisterVoiceRequest(
                voice_id="fuzz-1", display_name="Fuzz", audio=prompt, transcript=TRANSCRIPT, language_codes=["zh"]
            )
        ],
        "gateway.DeleteVoice": [gateway.DeleteVoiceRequest(voice_id="fuzz-1")],
        "gateway.CreateSession": [gateway.CreateSessionRequest(system_prompt="Be brief.", voice_id="Tingting")],
        "gateway.GetSession": [gateway.GetSessionRequest(session_id=kept_session)],
        "gateway.DeleteSession": [gateway.DeleteSessionRequest(session_id=doomed_session)],
        "gateway.StreamingChat": [
            [
                gateway.StreamingChatRequest(config=config),
                gateway.StreamingChatRequest(audio_content=speech),
                gateway.StreamingChatRequest(audio_content=silence),
                gateway.StreamingChatRequest(playback=gateway.PlaybackProgress(played_seconds=0.5)),
            ]
            for config in (
                gateway.StreamingChatConfig(input_format=pcm16, voice_id="Tingting", language="en"),
                gateway.StreamingChatConfig(input_format=pcm16, session_id=kept_session, disable_barge_in=True),
            )
        ],
        "tokenizer.StreamingTokenize": [
            [
                tokenizer.StreamingTokenizeRequest(
                    config=tokenizer.TokenizeConfig(format=pcm16, emit_tokens=True, emit_transcript=True, language="zh")
                ),
                tokenizer.StreamingTokenizeRequest(audio_content=speech),
                tokenizer.StreamingTokenizeRequest(audio_content=silence),
                tokenizer.StreamingTokenizeRequest(audio_content=speech),
            ]
        ],
        "tokenizer.Tokenize": [
            tokenizer.TokenizeRequest(config=tokenizer.TokenizeConfig(emit_tokens=True, trim_silence=True), audio=clip)
        ],
        "tokenizer.GetEngineInfo": [tokenizer.GetEngineInfoRequest()],
        "chat.Generate": [
            chat.GenerateRequest(
                messages=[
                    chat.ChatMessage(role=chat.ROLE_SYSTEM, text="Be brief."),
                    chat.ChatMessage(role=chat.ROLE_USER, text="Hi"),
                    chat.ChatMessage(role=chat.ROLE_ASSISTANT, text="Hello."),
                    chat.ChatMessage(role=chat.ROLE_USER, text="How are you?"),
                ],
                sampling=sampling,
            )
        ],
        "chat.GetEngineInfo": [chat.GetEngineInfoRequest()],
        "tts.Synthesize": [
            tts.SynthesizeRequest(
                text="你好。",
                voice_id="Tingting",
                controls=speech_pb2.VoiceControls(language="zh", speed=1.1, volume=0.8),
                sample_rate_hz=16000,
            )
        ],
        "tts.ListVoices": [tts.ListVoicesRequest(language="zh")],
        "tts.RegisterVoice": [
            tts.RegisterVoiceRequest(
                voice_id="fuzz-2",
                display_name="Fuzz",
                audio=prompt,
                transcript=TRANSCRIPT,
                prompt_tokens=TOKENS,
                language_codes=["zh-CN"],
            )
        ],
        "tts.DeleteVoice": [tts.DeleteVoiceRequest(voice_id="fuzz-2")],
    }


@pytest.fixture(scope="module")
def fuzzing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzing]:
    services = ServiceThread()
    cluster = Cluster(tmp_path_factory.mktemp("fuzz"))
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        services.run(cluster.start())
        kept, doomed = (services.run(cluster.create_session()) for _ in range(2))
        yield Fuzzing(services, cluster, MessageStrategies(hints(kept)), seeds(kept, doomed), errors)
    finally:
        logging.getLogger().removeHandler(errors)
        services.run(cluster.stop())
        services.close()


# --- the strategies of one RPC ------------------------------------------------------------------------------------


def _encoded(messages: st.SearchStrategy[Message]) -> st.SearchStrategy[bytes]:
    """Encodings of drawn messages, sometimes followed by fields this version of the protos does not know."""
    return st.tuples(messages, st.one_of(st.just(b""), unknown_fields())).map(
        lambda pair: pair[0].SerializeToString() + pair[1]
    )


def requests(fuzzing: Fuzzing, rpc: Rpc) -> st.SearchStrategy[list[bytes]]:
    """Half near misses of a seed request, half requests drawn from the descriptor alone."""
    strategies, seeded = fuzzing.strategies, st.sampled_from(fuzzing.seeds[rpc.name])
    anything = strategies.message(rpc.request)
    if not rpc.method.client_streaming:
        near = seeded.flatmap(lambda seed: mutated(strategies, seed))
        return _encoded(st.one_of(near, anything)).map(lambda payload: [payload])
    near_stream = seeded.flatmap(lambda seed: mutated_stream(strategies, seed))
    return st.one_of(_encoded_each(near_stream), st.lists(_encoded(anything), max_size=6))


def _encoded_each(streams: st.SearchStrategy[list[Message]]) -> st.SearchStrategy[list[bytes]]:
    return streams.flatmap(lambda messages: st.tuples(*(_encoded(st.just(message)) for message in messages)).map(list))


def raw_requests(fuzzing: Fuzzing, rpc: Rpc) -> st.SearchStrategy[list[bytes]]:
    strategies = fuzzing.strategies
    valid = _encoded(st.one_of(strategies.message(rpc.request), st.sampled_from(_flat(fuzzing.seeds[rpc.name]))))
    broken = malformed(rpc.request, valid)
    if not rpc.method.client_streaming:
        return broken.map(lambda payload: [payload])
    either = st.one_of(broken, valid)
    return st.tuples(either, broken, st.lists(either, max_size=3)).map(lambda parts: [parts[0], parts[1], *parts[2]])


def _flat(seeds: list) -> list[Message]:
    return [message for seed in seeds for message in (seed if isinstance(seed, list) else [seed])]


# --- the tests ----------------------------------------------------------------------------------------------------


def _fuzz(fuzzing: Fuzzing, rpc: Rpc, strategy: st.SearchStrategy[list[bytes]]) -> list[grpc.StatusCode]:
    """Run the cases; the codes answered, one per case."""
    answers: list[grpc.StatusCode] = []

    @settings(PROFILE)
    @given(payloads=strategy)
    def case(payloads: list[bytes]) -> None:
        answers.append(fuzzing.check(rpc, payloads))

    case()
    assert len(answers) >= EXAMPLES_PER_TEST, f"{rpc.name}: only {len(answers)} cases ran"
    return answers


def test_the_seed_requests_are_served(fuzzing: Fuzzing) -> None:
    """The near misses start from requests that reach the engines: each seed is answered OK."""
    for rpc in RPCS:
        for seed in fuzzing.seeds[rpc.name]:
            payloads = [message.SerializeToString() for message in (seed if isinstance(seed, list) else [seed])]
            outcome = fuzzing.services.run(fuzzing.cluster.exchange(rpc, payloads))
            assert outcome.code == grpc.StatusCode.OK, f"{rpc.name}: {outcome.details} for {rpc.describe(payloads)}"
            assert outcome.responses


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.name)
def test_messages_drawn_from_the_descriptors_get_documented_codes(fuzzing: Fuzzing, rpc: Rpc) -> None:
    answers = _fuzz(fuzzing, rpc, requests(fuzzing, rpc))
    assert set(answers) - {grpc.StatusCode.INVALID_ARGUMENT}, f"{rpc.name}: no case got past validation"


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.name)
def test_undecodable_bytes_get_invalid_argument(fuzzing: Fuzzing, rpc: Rpc) -> None:
    _fuzz(fuzzing, rpc, raw_requests(fuzzing, rpc))


def test_the_suite_covers_every_rpc_with_enough_cases() -> None:
    names = {(service.full_name, method.name) for service in SERVICES.values() for method in service.methods}
    assert len(names) == len(RPCS) == 19
    assert 2 * len(RPCS) * EXAMPLES_PER_TEST >= min(TOTAL_EXAMPLES, 1000)
