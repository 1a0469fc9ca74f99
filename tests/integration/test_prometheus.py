"""The real Prometheus (Debian's /usr/bin/prometheus) scraping the real cluster with the shipped configuration:
deploy/observability/prometheus/prometheus.yml with its targets pointed at the local processes (1 s scrapes and
rule evaluations) and the shipped alert and recording rules. A few turns go through the gateway; then, through
Prometheus's HTTP API: every service target is up, histogram_quantile over the gateway's time to first audio has a
value, the rules evaluate without error and record the SLO series, no availability alert is active, every
dashboard query runs, the prometheus-adapter queries answer per pod, and the names the services export are the
ones read from their code."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from stepaudio.common.v1 import speech_pb2
from stepaudio_client.client import GatewayClient, wav_audio

from tests import metric_names
from tools.cluster import LocalCluster, shared_data_dir

pytestmark = pytest.mark.integration

NAMESPACE = "stepaudio-test"  # the namespace/pod labels a PodMonitor adds on Kubernetes, for the adapter's queries
SERVICES = {"gateway", "tokenizer", "chat", "tts", "http"}
SHORT = speech_pb2.SamplingParams(temperature=0.0, seed=1, max_tokens=16)


def pod(job: str) -> str:
    return f"{job}-0"


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    log: Path

    def get(self, path: str, **params: str) -> object:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query: the result vector (or scalar, as one sample)."""
        data = self.get("/api/v1/query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def wait_for(self, expr: str, within: float = 30.0) -> list[dict]:
        """The result of ``expr`` once it is not empty."""
        deadline = time.monotonic() + within
        while not (result := self.query(expr)):
            assert time.monotonic() < deadline, f"no result for {expr} within {within:g} s"
            time.sleep(0.5)
        return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape_config(cluster: LocalCluster) -> dict:
    """The shipped compose configuration, its targets pointed at the cluster's processes."""
    config = yaml.safe_load(metric_names.PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(path) for path in metric_names.RULE_FILES]
    assert {job["job_name"] for job in config["scrape_configs"]} == SERVICES
    for job in config["scrape_configs"]:
        url = urllib.parse.urlsplit(cluster.services[job["job_name"]].metrics_url)
        assert url.path == job.get("metrics_path", "/metrics")
        job["static_configs"] = [
            {"targets": [url.netloc], "labels": {"namespace": NAMESPACE, "pod": pod(job["job_name"])}}
        ]
    return config


@pytest.fixture(scope="module")
def prometheus(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make install` (it installs Debian's prometheus package)")
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(cluster)))
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"prometheus exited: {log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        # Every target scraped once before the turns, so that rates over the turns have a baseline.
        server.wait_for(f'count(up{{namespace="{NAMESPACE}"}} == 1) == {len(SERVICES)}')
        yield server
    finally:
        process.terminate()
        assert process.wait(30) == 0, log.read_text()[-3000:]


async def drive_turns(address: str, recording: bytes) -> int:
    """A spoken turn (tokenizer, chat, tts) and a written one; returns how many played audio."""
    played = 0
    async with GatewayClient(address) as client:
        for turn in ({"audio": wav_audio(recording)}, {"text": "Say hello in one short sentence."}):
            result = await client.chat(sampling=SHORT, timeout=240, **turn)
            played += bool(result.pcm)
    return played


@pytest.fixture(scope="module")
def turns(cluster: LocalCluster, prometheus: Prometheus) -> int:
    """Turns through the gateway after Prometheus's first scrape; returns when Prometheus has scraped them all."""
    before = prometheus.query("sum(stepaudio_gateway_time_to_first_audio_seconds_count)")
    counted = float(before[0]["value"][1]) if before else 0.0
    recording = (shared_data_dir() / "Tingting_prompt.wav").read_bytes()
    played = asyncio.run(drive_turns(cluster.gateway_address, recording))
    assert played == 2
    prometheus.wait_for(f"sum(stepaudio_gateway_time_to_first_audio_seconds_count) >= {counted + played}")
    prometheus.wait_for("job:stepaudio_gateway_time_to_first_audio_seconds:p95_rate5m")  # rules saw them too
    return played


def test_every_service_target_is_up(prometheus: Prometheus) -> None:
    targets = prometheus.get("/api/v1/targets", state="active")["activeTargets"]
    assert {target["labels"]["job"] for target in targets} == SERVICES
    for target in targets:
        assert target["health"] == "up", (target["labels"]["job"], target["lastError"])
    up = {sample["metric"]["job"]: sample["value"][1] for sample in prometheus.query("up")}
    assert up == dict.fromkeys(SERVICES, "1")


def test_histogram_quantile_of_the_time_to_first_audio_has_a_value(prometheus: Prometheus, turns: int) -> None:
    # Over the whole run (Prometheus started minutes ago at most): the turns fall inside the window however slow.
    expr = "histogram_quantile(0.95, sum by (le) (rate(stepaudio_gateway_time_to_first_audio_seconds_bucket[10m])))"
    (sample,) = prometheus.query(expr)
    p95 = float(sample["value"][1])
    assert math.isfinite(p95) and 0 < p95 <= 60, p95
    # The same through the recording rule the alert and the dashboard read.
    recorded = prometheus.wait_for("job:stepaudio_gateway_time_to_first_audio_seconds:p95_rate5m")
    assert {sample["metric"]["job"] for sample in recorded} == {"gateway"}
    assert math.isfinite(float(recorded[0]["value"][1]))


def test_the_rules_evaluate_without_errors_and_record_the_slos(prometheus: Prometheus, turns: int) -> None:
    groups = prometheus.get("/api/v1/rules")["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert sorted(rule["name"] for rule in loaded) == sorted(
        rule.get("alert") or rule["record"] for rule in metric_names.rules()
    )
    deadline = time.monotonic() + 10
    while any(rule["lastEvaluation"].startswith("0001") for rule in loaded):  # not evaluated yet
        assert time.monotonic() < deadline
        time.sleep(0.5)
        loaded = [rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    for rule in loaded:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    for record in (
        "job:stepaudio_rpc_handled:rate5m",
        "job:stepaudio_rpc_errors:ratio_rate5m",
        "job:stepaudio_gateway_turns:rate5m",
        "job_stage:stepaudio_gateway_stage_duration_seconds:p95_rate5m",
        "job:stepaudio_gateway_tts_real_time_factor:p95_rate5m",
        "instance:stepaudio_event_loop_lag_seconds:p99_rate5m",
    ):
        assert prometheus.wait_for(record), record
    stages = {
        s["metric"]["stage"] for s in prometheus.query("job_stage:stepaudio_gateway_stage_duration_seconds:p95_rate5m")
    }
    assert stages == {"tokenize", "chat", "tts"}
    ratios = {
        s["metric"]["job"]: float(s["value"][1]) for s in prometheus.query("job:stepaudio_rpc_errors:ratio_rate5m")
    }
    assert {"gateway", "tokenizer", "chat", "tts"} <= set(ratios)  # 0 rather than absent without errors


def test_no_availability_alert_is_active_on_a_healthy_cluster(prometheus: Prometheus, turns: int) -> None:
    active = {alert["labels"]["alertname"] for alert in prometheus.get("/api/v1/alerts")["alerts"]}
    assert not active & {"StepAudioServiceUnavailable", "StepAudioStageNotServing", "StepAudioTargetDown"}
    # Their expressions are false now, not merely pending: every stage engine reports healthy.
    healthy = prometheus.query('stepaudio_engine_healthy{job=~"tokenizer|chat|tts"}')
    assert {s["metric"]["job"]: s["value"][1] for s in healthy} == {"tokenizer": "1", "chat": "1", "tts": "1"}


def test_every_dashboard_query_runs_and_the_core_panels_have_data(prometheus: Prometheus, turns: int) -> None:
    with_data = set()
    for title, expr in metric_names.dashboard_queries():
        if prometheus.query(expr):  # fails on a query Prometheus rejects
            with_data.add(title)
    # Panels whose series the CPU cluster exports (no vLLM here) show something after two turns.
    assert {
        "Time to first audio p95",
        "Chat turns per second",
        "Gateway error ratio",
        "Turns in progress",
        "Time to first audio",
        "Time to first audio distribution",
        "TTS real-time factor",
        "Stage latency",
        "Stage latency distribution: $stage",
        "Chat first token and TTS first chunk",
        "Requests per second",
        "In-flight RPCs per pod",
        "RPC latency p95 by method",
        "Engine health",
        "Event-loop lag p99",
        "Restarts in the last hour",
        "Resident memory",
        "Instances up",
    } <= with_data


def test_the_names_the_services_export_are_those_read_from_their_code(prometheus: Prometheus, turns: int) -> None:
    exported = metric_names.exported_metrics()
    seen = set(prometheus.get("/api/v1/label/__name__/values"))
    ours = {name for name in seen if name.startswith(("stepaudio_", "vllm:", "process_", "python_"))}
    assert ours <= set(exported), f"exported but not found in the code: {ours - set(exported)}"
    # What the rules and the dashboard read is really there, except what only the GPU engines define.
    gpu_only = ("vllm/", "services/chat/engines/vllm_engine/", "services/tts/engines/step_audio/")
    needed = {
        name
        for name in metric_names.referenced_metrics()
        if name in exported and not exported[name].startswith(gpu_only)
    }
    assert needed <= seen, f"referenced but not exported by the running services: {needed - seen}"


def test_the_adapter_queries_answer_per_pod(prometheus: Prometheus, turns: int) -> None:
    """prometheus-adapter's rule for the HPAs' stepaudio_rpc_inflight, filled in as the adapter fills it for
    `kubectl get --raw .../namespaces/<ns>/pods/*/stepaudio_rpc_inflight`."""
    (rule,) = [
        r for r in metric_names.adapter_rules() if metric_names.adapter_metric_name(r)[0] == "stepaudio_rpc_inflight"
    ]
    series_query, metrics_query = metric_names.adapter_queries(
        rule,
        "stepaudio_rpc_inflight",
        f'namespace="{NAMESPACE}",pod=~"{"|".join(pod(job) for job in ("gateway", "tokenizer", "chat", "tts"))}"',
        "pod",
    )
    series = prometheus.get("/api/v1/series", **{"match[]": series_query})
    assert {s["pod"] for s in series} == {pod(job) for job in ("gateway", "tokenizer", "chat", "tts")}
    answer = {s["metric"]["pod"]: float(s["value"][1]) for s in prometheus.query(metrics_query)}
    assert set(answer) == {pod(job) for job in ("gateway", "tokenizer", "chat", "tts")}
    assert all(value >= 0 for value in answer.values())
