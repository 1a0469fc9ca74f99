"""Metric names on both sides of the shipped observability files (deploy/observability): those the services export,
read from the metric definitions in their code (and vLLM's, which chat and the step-audio TTS load), and those the
rules, the dashboard and the prometheus-adapter config reference, read by parsing their PromQL. Shared by
tests/unit/test_observability_files.py and tests/integration/test_prometheus.py."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import promql_parser
import yaml
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

ROOT = Path(__file__).resolve().parent.parent
OBSERVABILITY = ROOT / "deploy" / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((OBSERVABILITY / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = OBSERVABILITY / "prometheus" / "tests" / "alerts.test.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "stepaudio.json"
ADAPTER_CONFIG = OBSERVABILITY / "prometheus-adapter" / "config.yaml"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

METRIC_TYPES = ("Counter", "Gauge", "Histogram", "Summary", "Info", "Enum")
# Series that Prometheus itself writes: per target, and for alerts.
PROMETHEUS_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)
DEFAULT_COLLECTORS = "prometheus_client's default collectors"


# --- What the services export ----------------------------------------------------------------------------------


def sample_names(kind: str, family: str) -> set[str]:
    """The sample names prometheus_client exports for a metric of this type and name (``_total``, ``_bucket``...)."""
    registry = CollectorRegistry()
    options = {"states": ["on"]} if kind == "Enum" else {}
    getattr(prometheus_client, kind)(family, "-", registry=registry, **options)
    return {sample.name for family_ in registry.collect() for sample in family_.samples}


def _metric_calls(tree: ast.Module, constructors: dict[str, str]) -> Iterator[tuple[str, ast.Call]]:
    """(metric type, call) for each call of a constructor (local name -> type; ``module.Name`` as well)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in constructors:
            yield constructors[name], node


def _literal_name(call: ast.Call) -> str | None:
    """The metric name of a constructor call, its first argument or its ``name=``, when that is a string literal."""
    node = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "name"), None)
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def service_metrics() -> dict[str, str]:
    """Sample name -> file, for every prometheus_client metric defined under services/."""
    exported: dict[str, str] = {}
    for path in sorted((ROOT / "services").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constructors = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
                constructors |= {a.asname or a.name: a.name for a in node.names if a.name in METRIC_TYPES}
            elif isinstance(node, ast.Import) and any(a.name == "prometheus_client" for a in node.names):
                constructors |= {kind: kind for kind in METRIC_TYPES}  # prometheus_client.Counter(...)
        where = str(path.relative_to(ROOT))
        for kind, call in _metric_calls(tree, constructors):
            if (name := _literal_name(call)) is None:
                raise AssertionError(f"{where}:{call.lineno}: a metric named by an expression cannot be checked")
            exported |= dict.fromkeys(sample_names(kind, name), where)
    return exported


def vllm_metrics_dir() -> Path:
    """vllm/v1/metrics of the vLLM that chat's and tts's vllm engines run (.venv-vllm), found without importing it."""
    if not VLLM_PYTHON.exists():
        raise AssertionError(f"{VLLM_PYTHON} is missing: run `make install` (it sets up vLLM's environment)")
    locate = "import importlib.util; print(importlib.util.find_spec('vllm').submodule_search_locations[0])"
    package = subprocess.run([VLLM_PYTHON, "-c", locate], capture_output=True, text=True, check=True).stdout.strip()
    return Path(package) / "v1" / "metrics"


def vllm_metrics() -> dict[str, str]:
    """Sample name -> "vllm/v1/metrics/<file>", for the metrics of vLLM's Prometheus stat logger (the vllm:* series
    on the chat and tts /metrics when they run vLLM). Names vLLM computes (info gauges) are left out: a reference to
    one fails the check, which errs on the safe side."""
    constructors = {"_gauge_cls": "Gauge", "_counter_cls": "Counter", "_histogram_cls": "Histogram"}
    exported: dict[str, str] = {}
    for path in sorted(vllm_metrics_dir().glob("*.py")):
        where = f"vllm/v1/metrics/{path.name}"
        for kind, call in _metric_calls(ast.parse(path.read_text(), str(path)), constructors):
            if (name := _literal_name(call)) is not None:
                exported |= dict.fromkeys(sample_names(kind, name), where)
    return exported


def default_collector_metrics() -> dict[str, str]:
    """The process_* and python_* series every service exports (they all serve prometheus_client's default
    registry)."""
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    return {sample.name: DEFAULT_COLLECTORS for family in registry.collect() for sample in family.samples}


def exported_metrics() -> dict[str, str]:
    """Every sample name a Step-Audio service can export -> where it is defined."""
    return default_collector_metrics() | vllm_metrics() | service_metrics()


# --- What the observability files reference ---------------------------------------------------------------------


def expression_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (it must parse)."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if not node.name:
                raise AssertionError(f"a selector without a metric name cannot be checked: {expr}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def rules() -> list[dict]:
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in: intervals by 5m, template variables by ``.*``."""
    return re.sub(r"\$\{?\w+\}?", ".*", re.sub(r"\$\{?__\w+\}?", "5m", expr))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, variables filled in."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        (panel["title"], grafana_to_promql(target["expr"])) for panel in panels for target in panel.get("targets", [])
    ]


def adapter_queries(rule: dict, series: str, label_matchers: str, group_by: str) -> tuple[str, str]:
    """(seriesQuery, metricsQuery) of a prometheus-adapter rule, the latter filled in as the adapter does for one
    request: <<.Series>> the series name, <<.LabelMatchers>> the namespace/pod matchers, <<.GroupBy>> the resource."""
    metrics_query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", label_matchers)
        .replace("<<.GroupBy>>", group_by)
    )
    return rule["seriesQuery"], metrics_query


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_CONFIG.read_text())["rules"]


def adapter_metric_name(rule: dict) -> tuple[str, str]:
    """(series name, the name the adapter serves it under) of a rule whose seriesQuery selects one metric."""
    (series,) = expression_metrics(rule["seriesQuery"])
    served = re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${", "\\g<").replace("}", ">"), series)
    return series, served


def referenced_metrics() -> dict[str, set[str]]:
    """Metric name -> the files (and dashboard panels) that reference it."""
    referenced: dict[str, set[str]] = {}

    def note(names: set[str], where: str) -> None:
        for name in names:
            referenced.setdefault(name, set()).add(where)

    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                note(expression_metrics(rule["expr"]), f"{path.name}: {rule.get('alert') or rule.get('record')}")
    for title, expr in dashboard_queries():
        note(expression_metrics(expr), f"dashboard: {title}")
    for rule in adapter_rules():
        series, _ = adapter_metric_name(rule)
        _, query = adapter_queries(rule, series, 'namespace="n",pod="p"', "pod")
        note(expression_metrics(rule["seriesQuery"]) | expression_metrics(query), f"adapter: {series}")
    return referenced
