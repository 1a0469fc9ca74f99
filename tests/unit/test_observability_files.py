"""The shipped observability files (deploy/observability): the rules pass `promtool check` and their unit tests
(`promtool test rules`, synthetic series), every alert is proven to fire there, and the rules, the dashboard, the
prometheus-adapter config and KEDA's queries reference only metrics the services export (read from the metric
definitions in code). The compose and Kubernetes wiring match the services: scrape targets and ports, PodMonitor
ports and job labels, the HPAs' metrics, the generated PrometheusRule."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import metric_names
from tests.metric_names import (
    ADAPTER_CONFIG,
    DASHBOARD,
    OBSERVABILITY,
    PROMETHEUS_CONFIG,
    PROMETHEUS_SERIES,
    ROOT,
    RULE_FILES,
    RULE_TESTS,
)
from tools import prometheus_rule

COMPOSE = ROOT / "deploy" / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
SERVICES = {"gateway", "tokenizer", "chat", "tts", "http"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make install` (it installs Debian's prometheus package)")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    return metric_names.exported_metrics()


def k8s_documents(under: str = "") -> list[dict]:
    """The Kubernetes objects (and patches) of the manifests under deploy/k8s/<under>."""
    return [
        document
        for path in sorted((K8S / under).rglob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if isinstance(document, dict) and "kind" in document
    ]


def alert_rules() -> list[dict]:
    return [rule for rule in metric_names.rules() if "alert" in rule]


def test_promtool_accepts_the_rules_and_the_compose_config() -> None:
    checked = promtool("check", "rules", *RULE_FILES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", PROMETHEUS_CONFIG)  # also loads rule_files (rules/*.yml)
    assert config.returncode == 0, config.stdout + config.stderr
    assert f"{len(RULE_FILES)} rule files found" in config.stdout


def test_the_alert_unit_tests_pass() -> None:
    tested = promtool("test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_fires_in_a_unit_test_and_is_annotated() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    proven = {check["alertname"] for case in cases for check in case.get("alert_rule_test", []) if check["exp_alerts"]}
    alerts = alert_rules()
    assert len(alerts) >= 6
    assert {rule["alert"] for rule in alerts} <= proven, "alerts without a unit test that makes them fire"
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    # What the issue asks to be alerted on, by the series each alert reads.
    reads = {rule["alert"]: metric_names.expression_metrics(rule["expr"]) for rule in alerts}
    recorded = {rule["record"]: rule["expr"] for rule in metric_names.rules() if "record" in rule}
    for names in reads.values():
        for name in list(names):
            if name in recorded:
                names |= metric_names.expression_metrics(recorded[name])
    for needed in (
        "stepaudio_engine_healthy",  # a stage NOT_SERVING
        "stepaudio_rpc_handled_total",  # error ratio
        "stepaudio_gateway_time_to_first_audio_seconds_bucket",  # time to first audio p95
        "vllm:num_requests_waiting",  # queue depth
        "process_start_time_seconds",  # restarts
        "stepaudio_event_loop_lag_seconds_bucket",  # event-loop lag
    ):
        assert any(needed in names for names in reads.values()), f"no alert reads {needed}"


def test_the_service_metric_scan_sees_the_definitions(exported: dict[str, str]) -> None:
    """The scan that the reference checks rely on finds the metrics of each module that defines some."""
    assert exported["stepaudio_rpc_inflight"] == "services/common/server.py"
    assert exported["stepaudio_rpc_handled_total"] == "services/common/server.py"
    assert exported["stepaudio_gateway_time_to_first_audio_seconds_bucket"] == "services/gateway/metrics.py"
    assert exported["stepaudio_engine_healthy"] == "services/common/health_monitor.py"
    assert exported["stepaudio_http_requests_total"] == "services/http/metrics.py"
    assert exported["stepaudio_chat_vllm_requests"] == "services/chat/engines/vllm_engine/engine.py"
    assert exported["vllm:kv_cache_usage_perc"] == "vllm/v1/metrics/loggers.py"
    assert exported["vllm:time_to_first_token_seconds_bucket"] == "vllm/v1/metrics/loggers.py"
    assert exported["process_start_time_seconds"] == metric_names.DEFAULT_COLLECTORS
    assert "stepaudio_rpc_handled" not in exported  # a counter is exported as <name>_total


def test_rules_dashboard_adapter_and_keda_reference_only_exported_metrics(exported: dict[str, str]) -> None:
    known = set(exported) | metric_names.recorded_names() | PROMETHEUS_SERIES
    referenced = metric_names.referenced_metrics()
    for document in k8s_documents():  # KEDA ScaledObjects (components/chat-autoscaling) query Prometheus too
        if document["kind"] == "ScaledObject":
            for trigger in document.get("spec", {}).get("triggers", []):
                if trigger["type"] == "prometheus":
                    for name in metric_names.expression_metrics(trigger["metadata"]["query"]):
                        referenced.setdefault(name, set()).add(f"ScaledObject {document['metadata']['name']}")
    unknown = {name: sorted(where) for name, where in referenced.items() if name not in known}
    assert not unknown, f"metrics no service exports: {unknown}"
    # The recorded series the dashboard and the alerts read are all recorded.
    assert {name for name in referenced if name.count(":") == 2 and not name.startswith("vllm:")} <= (
        metric_names.recorded_names()
    )


def test_the_dashboard_shows_what_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)\}?", target["expr"])) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']}: undefined variables {used - variables}"
        if panel.get("repeat"):
            assert panel["repeat"] in variables
    shown = {name for _, expr in metric_names.dashboard_queries() for name in metric_names.expression_metrics(expr)}
    for needed in (
        "stepaudio_gateway_stage_duration_seconds_bucket",  # latency histograms per stage
        "stepaudio_gateway_time_to_first_audio_seconds_bucket",  # TTFA
        "stepaudio_gateway_tts_real_time_factor_bucket",  # RTF
        "stepaudio_rpc_inflight",  # in-flight
        "stepaudio_rpc_handled_total",  # errors by code
        "vllm:kv_cache_usage_perc",  # vLLM KV usage
    ):
        assert needed in shown, f"the dashboard does not show {needed}"


def test_the_adapter_serves_every_pods_metric_the_hpas_use() -> None:
    served = {metric_names.adapter_metric_name(rule)[1] for rule in metric_names.adapter_rules()}
    used = {
        metric["pods"]["metric"]["name"]
        for document in k8s_documents()
        if document["kind"] == "HorizontalPodAutoscaler"
        for metric in document.get("spec", {}).get("metrics", [])
        if metric["type"] == "Pods"
    }
    assert "stepaudio_rpc_inflight" in used
    assert used <= served, f"HPA metrics the adapter does not serve: {used - served}"
    for rule in metric_names.adapter_rules():
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}, ADAPTER_CONFIG
        for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert template in rule["metricsQuery"]


def test_the_prometheusrule_is_generated_from_the_rule_files() -> None:
    path = OBSERVABILITY / "k8s" / "prometheusrule.yaml"
    assert path.read_text() == prometheus_rule.render(), (
        "run: python -m tools.prometheus_rule > deploy/observability/k8s/prometheusrule.yaml"
    )
    assert yaml.safe_load(path.read_text())["spec"]["groups"] == prometheus_rule.rule_groups()


def metrics_port(service: dict) -> int:
    """The port a compose service serves /metrics on: *_METRICS_PORT, or the HTTP service's own port."""
    environment = service["environment"]
    if isinstance(environment, list):  # the KEY=value form
        environment = dict(item.split("=", 1) for item in environment)
    port = next((value for key, value in environment.items() if key.endswith("_METRICS_PORT")), None)
    return int(port or environment["HTTP_PORT"])


def test_the_compose_scrape_config_targets_every_service_on_its_metrics_port() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    jobs = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    assert {job["job_name"] for job in jobs} == SERVICES
    for job in jobs:
        (static,) = job["static_configs"]
        assert static["targets"] == [f"{job['job_name']}:{metrics_port(compose[job['job_name']])}"]
        assert job.get("metrics_path", "/metrics") == "/metrics"
    for name in ("prometheus", "grafana"):
        assert compose[name]["profiles"] == ["observability"], name
        for volume in compose[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts {source}, which does not exist"
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in compose["prometheus"]["volumes"]}
    assert (COMPOSE.parent / mounts["/etc/prometheus"] / "prometheus.yml").samefile(PROMETHEUS_CONFIG)
    provider = yaml.safe_load((OBSERVABILITY / "grafana/provisioning/dashboards/stepaudio.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    grafana_mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in compose["grafana"]["volumes"]}
    assert (COMPOSE.parent / grafana_mounts[dashboards_dir] / DASHBOARD.name).samefile(DASHBOARD)
    datasource = yaml.safe_load((OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_podmonitor_scrapes_every_workload_under_its_service_name() -> None:
    podmonitor = yaml.safe_load((OBSERVABILITY / "k8s" / "podmonitor.yaml").read_text())["spec"]
    ports = {endpoint["port"] for endpoint in podmonitor["podMetricsEndpoints"]}
    scraped: set[str] = set()
    for document in k8s_documents("base"):
        if document["kind"] == "Deployment":
            templates = [document["spec"]["template"]]
        elif document["kind"] == "LeaderWorkerSet":
            templates = [document["spec"]["leaderWorkerTemplate"]["leaderTemplate"]]
        else:
            continue
        for template in templates:
            labels = template["metadata"]["labels"]
            container_ports = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
            assert container_ports & ports, f"{document['metadata']['name']}: no port the PodMonitor scrapes"
            scraped.add(labels[podmonitor["jobLabel"]])
    assert scraped == SERVICES, "the PodMonitor's job label must be the service name, as in the compose config"


def test_no_absolute_paths_of_this_machine() -> None:
    for path in OBSERVABILITY.rglob("*"):
        if path.is_file():
            assert str(ROOT) not in path.read_text(), path
