"""The chat service with the ``vllm`` engine as a real process (.venv-vllm), on a tiny random Step1 checkpoint.

On this CPU-only CI the Step1 attention runs through the CPU test double (plain ALiBi instead of sqrt-ALiBi, see
tools/vllm_cpu_test_plugin): everything else is real (config, weights, untied head, tokenizer ids, AsyncLLM, the
scheduler, streaming, abort, metrics). The service starts once for the module (about 30 s).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc
from stepaudio.common.v1 import speech_pb2

from services.chat.engine import Message
from services.chat.prompt import after_special, build_prompt
from tests.integration.engine_core import kill_engine_cores
from tests.unit.test_stage_servicers import assert_serving, expect_code
from tools.bench_chat_vllm import VLLM_PYTHON, ServiceProcess, metric_values
from tools.cluster import health_status
from tools.tiny_step1 import build_tokenizer, write_tiny_step1

pytestmark = pytest.mark.integration

MAX_MODEL_LEN = 1024
USER, SYSTEM, ASSISTANT = chat_pb2.ROLE_USER, chat_pb2.ROLE_SYSTEM, chat_pb2.ROLE_ASSISTANT


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make install` (it builds .venv-vllm with tools/setup_vllm_env.sh)")
    models_dir = tmp_path_factory.mktemp("models")
    # Written like the published configs (no tie_word_embeddings key): the engine must untie the head itself.
    write_tiny_step1(models_dir, tie_word_embeddings=None, max_seq_len=MAX_MODEL_LEN)
    process = ServiceProcess(models_dir, tmp_path_factory.mktemp("chat-vllm"))
    process.start()
    yield process
    code = process.stop()
    assert code == 0, f"the vllm chat service did not shut down cleanly ({code}); see {process.log_file}"


@pytest.fixture
async def stub(service: ServiceProcess):
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield chat_pb2_grpc.ChatServiceStub(channel), channel


def request(*messages: chat_pb2.ChatMessage, **sampling: float) -> chat_pb2.GenerateRequest:
    return chat_pb2.GenerateRequest(messages=list(messages), sampling=speech_pb2.SamplingParams(**sampling))


def user(text: str = "", audio: str = "") -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(role=USER, text=text, audio_tokens=audio)


LONG = dict(temperature=1.0, top_k=0, max_tokens=4000)  # ~1000 tokens (the context's end): seconds on CPU


def metrics(service: ServiceProcess) -> str:
    with urllib.request.urlopen(service.metrics_url, timeout=5) as response:
        return response.read().decode()


async def wait_idle(service: ServiceProcess, within: float = 3.0) -> str:
    """Until vLLM's running/waiting gauges and the engine's request count are all 0; the page."""
    deadline = time.monotonic() + within
    while True:
        page = await asyncio.to_thread(metrics, service)
        counts = [
            *metric_values(page, "vllm:num_requests_running"),
            *metric_values(page, "vllm:num_requests_waiting"),
            *metric_values(page, "stepaudio_chat_vllm_requests"),
        ]
        if len(counts) >= 3 and not any(counts):
            return page
        if time.monotonic() > deadline:
            raise AssertionError(f"requests still held {within} s after the streams ended: {counts}")
        await asyncio.sleep(0.1)


async def collect(stub, generate_request: chat_pb2.GenerateRequest) -> tuple[str, chat_pb2.GenerateSummary]:
    text = ""
    summary = None
    async for response in stub.Generate(generate_request):
        if response.HasField("summary"):
            summary = response.summary
        else:
            text += response.text_delta
    assert summary is not None
    return text, summary


async def test_engine_info(stub) -> None:
    info = await stub[0].GetEngineInfo(chat_pb2.GetEngineInfoRequest())
    assert (info.engine, info.model, info.supports_audio_tokens, info.max_context_tokens) == (
        "vllm",
        "Step-Audio-Chat",
        True,
        MAX_MODEL_LEN,
    )


async def test_streams_text_with_usage_from_the_reference_prompt(stub) -> None:
    messages = [Message("system", "you are helpful"), Message("user", "hello", "<audio_3><audio_1024><audio_5119>")]
    tokenizer = build_tokenizer()
    expected_prompt = build_prompt(messages, after_special(lambda s: tokenizer.encode(s, add_special_tokens=False).ids))
    generate = request(
        chat_pb2.ChatMessage(role=SYSTEM, text="you are helpful"),
        user("hello", "<audio_3><audio_1024><audio_5119>"),
        temperature=0.0,
        max_tokens=24,
        seed=7,
    )
    deltas = [r async for r in stub[0].Generate(generate)]
    assert len(deltas) > 2 and deltas[-1].HasField("summary")
    summary = deltas[-1].summary
    assert summary.prompt_tokens == len(expected_prompt)
    assert 0 < summary.completion_tokens <= 24
    assert summary.finish_reason in (chat_pb2.FINISH_REASON_STOP, chat_pb2.FINISH_REASON_LENGTH)
    if summary.finish_reason == chat_pb2.FINISH_REASON_LENGTH:
        assert summary.completion_tokens == 24
    assert 0 < summary.time_to_first_token_seconds <= summary.total_seconds
    text = "".join(d.text_delta for d in deltas[:-1])
    assert text and (await collect(stub[0], generate))[0] == text  # greedy: the same reply twice


async def test_cancelling_mid_stream_aborts_the_request(stub, service: ServiceProcess) -> None:
    call = stub[0].Generate(request(user("hello"), **LONG))
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            page = await asyncio.to_thread(metrics, service)
            assert metric_values(page, "vllm:num_requests_running") == [1.0]
            assert metric_values(page, "stepaudio_chat_vllm_requests") == [1.0]
            call.cancel()
            break
    await wait_idle(service, within=3.0)  # a natural end would take several seconds
    assert "vllm request aborted" in service.log_file.read_text()
    await assert_serving(stub[1])


async def test_deadline_is_honoured_and_the_request_aborted(stub, service: ServiceProcess) -> None:
    started = time.monotonic()
    await expect_code(stub[0].Generate(request(user("hello"), **LONG), timeout=1.0), grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 2.0
    await wait_idle(service, within=3.0)
    await assert_serving(stub[1])


async def test_eight_concurrent_streams_complete(stub, service: ServiceProcess) -> None:
    replies = await asyncio.gather(
        *(collect(stub[0], request(user(f"hello {n}"), temperature=1.0, max_tokens=32, seed=n)) for n in range(8))
    )
    for _, summary in replies:
        assert summary.completion_tokens > 0 and summary.finish_reason != chat_pb2.FINISH_REASON_UNSPECIFIED
    assert len({text for text, _ in replies}) > 1  # different seeds, different replies
    page = await wait_idle(service)
    finished = sum(metric_values(page, "vllm:request_success_total"))
    assert finished >= 8


@pytest.mark.parametrize(
    ("generate", "message"),
    [
        (request(), "messages is empty"),
        (request(chat_pb2.ChatMessage(role=chat_pb2.ROLE_UNSPECIFIED, text="hi")), "messages[0].role is not set"),
        (request(user("hi", "<audio_1><audio_5120>")), "<audio_5120>: audio codes run from 0 to 5119"),
        (request(user("", "<audio_1>hello")), "expected only <audio_N> tokens"),
        (request(user("hi"), temperature=3.0), "sampling.temperature 3 is out of range"),
        (request(user("hi"), top_p=0.0), "sampling.top_p 0 is out of range"),
        (request(user("hello " * 1100)), f"the model holds {MAX_MODEL_LEN} tokens"),
    ],
)
async def test_bad_input_is_invalid_argument_and_the_service_stays_serving(stub, generate, message) -> None:
    details = await expect_code(stub[0].Generate(generate), grpc.StatusCode.INVALID_ARGUMENT, message)
    if "model holds" in message:  # both numbers named
        tokenizer = build_tokenizer()
        encode = after_special(lambda s: tokenizer.encode(s, add_special_tokens=False).ids)
        prompt = build_prompt([Message("user", generate.messages[0].text)], encode)
        assert f"the conversation is {len(prompt)} tokens" in details
    await assert_serving(stub[1])


async def test_vllm_metrics_beside_the_service_metrics(stub, service: ServiceProcess) -> None:
    await collect(stub[0], request(user("hi"), max_tokens=4))
    page = await asyncio.to_thread(metrics, service)
    assert metric_values(page, "vllm:generation_tokens_total") and sum(
        metric_values(page, "vllm:generation_tokens_total")
    )
    assert 'stepaudio_rpc_handled_total{code="OK",method="Generate"}' in page
    assert "vllm:time_to_first_token_seconds_bucket" in page


def test_the_test_double_is_on_and_the_head_untied(service: ServiceProcess) -> None:
    log = service.log_file.read_text()
    assert "plain ALiBi" in log
    assert "hf_overrides tie_word_embeddings=false" in log


def test_models_dir_setting_error_is_clear(tmp_path: Path) -> None:
    broken = ServiceProcess(tmp_path / "nothing-here", tmp_path)
    with pytest.raises(RuntimeError, match="is not a directory"):
        broken.start(timeout=120)


def test_a_dead_engine_core_makes_the_service_not_serving_and_exit_non_zero(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The engine side dies (vLLM's engine core process, SIGKILL): the service must stop answering SERVING and exit
    with code 1 so the orchestrator restarts it — not keep a dead front end SERVING."""
    models_dir = tmp_path_factory.mktemp("models-kill")
    write_tiny_step1(models_dir, tie_word_embeddings=None, max_seq_len=MAX_MODEL_LEN)
    doomed = ServiceProcess(
        models_dir, tmp_path_factory.mktemp("chat-vllm-kill"), extra_flags={"--health-check-interval-seconds": "0.5"}
    )
    doomed.start()
    try:
        chat = doomed.cluster.services["chat"]
        assert health_status(chat.address) == health_pb2.HealthCheckResponse.SERVING
        assert kill_engine_cores(chat.process.pid) >= 1, "no vLLM engine core child process found"
        exit_code = chat.process.wait(30)
        assert exit_code == 1, f"exit code {exit_code}; see {doomed.log_file}"
        assert "engine cannot recover" in doomed.log_file.read_text()
    finally:
        doomed.stop(10)
