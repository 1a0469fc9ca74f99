"""Config parity: what the deploy files set is what the services read and serve.

Rendered as the tools render them (tests/deploy_files.py): the Compose files by the Docker Compose binary (the CPU
override merged as Compose merges it), every kustomize overlay and optional component by ``kubectl kustomize``.
For each container of a service the environment it gets (its image's Dockerfile ENV, then what the deploy file
sets) must consist of settings of that service (the pydantic settings models: env prefix + field name), and must
load into them; the few variables read by libraries instead (NCCL, Gloo, vLLM) are listed below with their reason.
Ports, probes and metrics must be the ones the service serves: its settings' ports, the grpc.health.v1 service
names it registers, the HTTP routes it has, and a /metrics that answers."""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import start_http_server
from pydantic import ValidationError
from pydantic_settings import BaseSettings

import services.chat.__main__ as chat_main
import services.gateway.__main__ as gateway_main
import services.tokenizer.__main__ as tokenizer_main
import services.tts.__main__ as tts_main
from services.chat.settings import ChatSettings
from services.common.settings import ServiceSettings
from services.gateway.settings import GatewaySettings
from services.http.app import create_app
from services.http.settings import HttpSettings
from services.tokenizer.settings import TokenizerSettings
from services.tts.settings import TtsSettings
from tests.deploy_files import (
    COMPOSE_CPU,
    COMPOSE_FILE,
    Variant,
    compose_config,
    dockerfile_stages,
    image_stage,
    render,
    variants,
)

SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "tokenizer": TokenizerSettings,
    "chat": ChatSettings,
    "tts": TtsSettings,
    "http": HttpSettings,
}
# The grpc.health.v1 service names each gRPC service registers (besides "", the server).
HEALTH_NAMES = {
    "gateway": gateway_main.SERVICE_NAME,
    "tokenizer": tokenizer_main.SERVICE_NAME,
    "chat": chat_main.SERVICE_NAME,
    "tts": tts_main.SERVICE_NAME,
}
# Environment variables a deploy file may give a service that are not its settings: each is read by a library or
# script in its container.
THIRD_PARTY_ENV = {
    "chat": {
        "GPUS_PER_POD": "the chat pods' start script: GPUs each pod offers to the Ray cluster (base/chat.yaml)",
        "NCCL_SOCKET_IFNAME": "NCCL: the interface of its TCP traffic and bootstrap between nodes",
        "GLOO_SOCKET_IFNAME": "Gloo (torch.distributed's CPU groups in vLLM): the interface between nodes",
        "VLLM_HOST_IP": "vLLM: the address this node advertises to the others",
        "NCCL_NET": "NCCL: the network to use (IB: fail rather than fall back to sockets)",
        "NCCL_IB_DISABLE": "NCCL: InfiniBand/RoCE verbs on or off",
    },
}
# Container names -> (service, whether the container runs the service's server).
CONTAINERS = {
    "gateway": ("gateway", True),
    "tokenizer": ("tokenizer", True),
    "chat": ("chat", True),
    "tts": ("tts", True),
    "http": ("http", True),
    "ray-worker": ("chat", False),  # a Ray worker of a multi-node chat group: runs vLLM workers, no gRPC server
}
FROM_FIELD = object()  # an env value the cluster fills in (valueFrom): its name is checked, not its value
PREFIXES = {service: cls.model_config["env_prefix"] for service, cls in SETTINGS.items()}
HTTP_ROUTES = {getattr(route, "path", None) for route in create_app(HttpSettings()).routes} - {None}


def setting_names(service: str) -> set[str]:
    return {PREFIXES[service] + name.upper() for name in SETTINGS[service].model_fields}


def load_settings(service: str, env: dict[str, object], where: str) -> BaseSettings:
    """The settings ``service`` starts with under ``env`` (only its own prefix counts), as its process loads them."""
    prefix = PREFIXES[service]
    saved = {key: value for key, value in os.environ.items() if key.startswith(prefix)}
    for key in saved:
        del os.environ[key]
    os.environ.update({k: str(v) for k, v in env.items() if k.startswith(prefix) and v is not FROM_FIELD})
    try:
        return SETTINGS[service]()
    except ValidationError as error:
        pytest.fail(f"{where}: the environment does not load into {SETTINGS[service].__name__}: {error}")
    finally:
        for key in [key for key in os.environ if key.startswith(prefix)]:
            del os.environ[key]
        os.environ.update(saved)


def check_names(service: str, env: dict[str, object], where: str) -> None:
    allowed = setting_names(service) | set(THIRD_PARTY_ENV.get(service, {}))
    unknown = sorted(set(env) - allowed)
    assert not unknown, (
        f"{where}: {unknown} are not settings of the {service} service (services/{service}/settings.py) nor "
        "variables listed in THIRD_PARTY_ENV with the library that reads them"
    )


@dataclass
class Container:
    where: str
    service: str
    serves: bool
    spec: dict
    pod: dict  # the pod template: {"metadata": ..., "spec": ...}
    env: dict[str, object]  # image ENV, then envFrom, then env
    settings: BaseSettings


def k8s_containers(docs: list[dict]) -> Iterator[Container]:
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        templates = []
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            templates = [("", doc["spec"]["template"])]
        elif doc["kind"] == "LeaderWorkerSet":
            group = doc["spec"]["leaderWorkerTemplate"]
            templates = [(f"/{key}", group[key]) for key in ("leaderTemplate", "workerTemplate") if key in group]
        for suffix, pod in templates:
            for spec in pod["spec"]["containers"]:
                where = f"{doc['kind']}/{doc['metadata']['name']}{suffix} container {spec['name']}"
                if spec["name"] not in CONTAINERS:
                    pytest.fail(f"{where}: unknown container; add it to CONTAINERS in {__name__}")
                service, serves = CONTAINERS[spec["name"]]
                env: dict[str, object] = dict(image_stage(spec["image"]).env)
                for source in spec.get("envFrom", []):
                    name = source["configMapRef"]["name"]
                    assert name in configmaps, f"{where}: envFrom names ConfigMap {name}, which is not rendered"
                    env.update(configmaps[name])
                for item in spec.get("env", []):
                    env[item["name"]] = item["value"] if "value" in item else FROM_FIELD
                # The image's own variables of other kinds (PYTHONPATH...) are the image's business.
                own = {
                    k: v
                    for k, v in env.items()
                    if k in spec_env_names(spec, configmaps) or k.startswith(PREFIXES[service])
                }
                check_names(service, own, where)
                yield Container(where, service, serves, spec, pod, env, load_settings(service, env, where))


def spec_env_names(spec: dict, configmaps: dict[str, dict]) -> set[str]:
    names = {item["name"] for item in spec.get("env", [])}
    for source in spec.get("envFrom", []):
        names |= set(configmaps.get(source["configMapRef"]["name"], {}))
    return names


VARIANTS = variants()


@pytest.fixture(params=VARIANTS, ids=[v.name for v in VARIANTS])
def variant(request: pytest.FixtureRequest) -> Variant:
    return request.param


def test_every_overlay_and_component_is_covered() -> None:
    names = {v.name for v in VARIANTS}
    assert {"cpu", "gpu", "gpu+chat-multinode", "gpu+chat-autoscaling", "gpu+observability"} <= names
    assert any("chat-rdma" in v.components for v in VARIANTS)


def test_k8s_environment_is_settings_of_the_service(variant: Variant) -> None:
    containers = list(k8s_containers(render(variant)))
    assert {c.service for c in containers if c.serves} == set(SETTINGS), "a service has no container"


def probe_port(probe: dict, container: dict) -> int:
    port = probe.get("grpc", probe.get("httpGet", {})).get("port")
    if isinstance(port, str):
        named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert port in named, f"probe port {port!r} is not a named port of the container"
        return named[port]
    return port


def test_k8s_ports_probes_and_metrics_are_what_the_service_serves(variant: Variant) -> None:
    for c in k8s_containers(render(variant)):
        if not c.serves:
            assert "ports" not in c.spec or all(p["name"].startswith("ray") for p in c.spec["ports"]), c.where
            continue
        s = c.settings
        ports = {p["name"]: p["containerPort"] for p in c.spec.get("ports", [])}
        annotations = c.pod["metadata"].get("annotations", {})
        assert s.host == "0.0.0.0", f"{c.where}: binds {s.host}, unreachable from outside the pod"
        assert annotations.get("prometheus.io/scrape") == "true", c.where
        assert annotations.get("prometheus.io/path") == "/metrics", c.where
        grace = c.pod["spec"]["terminationGracePeriodSeconds"]
        pre_stop = c.spec.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_stop_seconds = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
        assert grace > s.shutdown_grace_seconds + pre_stop_seconds, (
            f"{c.where}: terminationGracePeriodSeconds {grace} does not cover the drain "
            f"({s.shutdown_grace_seconds} s) after the preStop ({pre_stop_seconds} s)"
        )
        probes = {kind: c.spec.get(kind) for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert all(probes.values()), f"{c.where}: missing probes {[k for k, v in probes.items() if not v]}"
        if c.service == "http":
            assert ports == {"http": s.port}, f"{c.where}: ports {ports}, HTTP_PORT {s.port}"
            assert annotations.get("prometheus.io/port") == str(s.port), c.where
            assert "/metrics" in HTTP_ROUTES
            for kind, probe in probes.items():
                assert probe_port(probe, c.spec) == s.port, f"{c.where}: {kind} port"
                assert probe["httpGet"]["path"] in HTTP_ROUTES, f"{c.where}: {kind} path {probe['httpGet']['path']}"
            continue
        assert isinstance(s, ServiceSettings)
        assert s.port and s.metrics_port, f"{c.where}: ports must be fixed in a container (port 0 picks one)"
        assert s.metrics_host == "0.0.0.0", f"{c.where}: /metrics binds {s.metrics_host}"
        assert ports.get("grpc") == s.port, f"{c.where}: grpc port {ports.get('grpc')}, settings {s.port}"
        assert ports.get("metrics") == s.metrics_port, f"{c.where}: metrics port {ports.get('metrics')}"
        assert annotations.get("prometheus.io/port") == str(s.metrics_port), c.where
        health = HEALTH_NAMES[c.service]
        for kind, probe in probes.items():
            assert "grpc" in probe, f"{c.where}: {kind} is not a gRPC health probe"
            assert probe_port(probe, c.spec) == s.port, f"{c.where}: {kind} port"
            # Start-up and readiness ask for the service (SERVING once the engine is loaded); liveness may ask
            # the server ("") so that a NOT_SERVING engine is taken out of rotation, not restarted.
            allowed = {health} if kind != "livenessProbe" else {health, ""}
            assert probe["grpc"].get("service", "") in allowed, f"{c.where}: {kind} asks {probe['grpc'].get('service')}"


def test_pod_monitors_scrape_each_service_on_its_metrics_port(variant: Variant) -> None:
    docs = render(variant)
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    if not monitors:
        return
    for c in k8s_containers(docs):
        if not c.serves:
            continue
        metrics_port = c.settings.port if c.service == "http" else c.settings.metrics_port
        named = {p["name"]: p["containerPort"] for p in c.spec.get("ports", [])}
        labels = c.pod["metadata"].get("labels", {})
        scraped = [
            endpoint
            for monitor in monitors
            if monitor["spec"]["selector"].get("matchLabels", {}).items() <= labels.items()
            for endpoint in monitor["spec"]["podMetricsEndpoints"]
            if endpoint.get("port") in named
        ]
        assert scraped, f"{c.where}: no PodMonitor endpoint scrapes it"
        for endpoint in scraped:
            assert named[endpoint["port"]] == metrics_port, f"{c.where}: scraped on {endpoint['port']}"
            assert endpoint.get("path", "/metrics") == "/metrics", c.where


def test_prometheus_metrics_answer_on_the_metrics_path() -> None:
    """The gRPC services' /metrics is prometheus-client's HTTP server (services/common/server.py: serve)."""
    server, _ = start_http_server(0, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert response.status == 200 and "# TYPE stepaudio_rpc_handled_total counter" in body
    finally:
        server.shutdown()


def test_k8s_services_and_addresses_reach_the_right_ports(variant: Variant) -> None:
    docs = render(variant)
    containers = [c for c in k8s_containers(docs) if c.serves]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for svc in services.values():
        selector = svc["spec"]["selector"]
        selected = [c for c in containers if selector.items() <= c.pod["metadata"].get("labels", {}).items()]
        assert selected, f"Service/{svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            for c in selected:
                named = {p["name"]: p["containerPort"] for p in c.spec.get("ports", [])}
                target = port.get("targetPort", port["port"])
                number = named.get(target) if isinstance(target, str) else target
                assert number == port["port"], f"Service/{svc['metadata']['name']} port {port['name']} -> {c.where}"
    # Every address a service dials is a Service that serves the callee's gRPC port.
    for c in containers:
        for field, callee in (
            ("tokenizer_address", "tokenizer"),
            ("chat_address", "chat"),
            ("tts_address", "tts"),
            ("gateway_address", "gateway"),
        ):
            address = getattr(c.settings, field, None)
            if address is None:
                continue
            host, port = re.sub(r"^dns:///", "", address).rsplit(":", 1)
            assert host in services, f"{c.where}: {field} {address} names no Service"
            callee_port = next(x.settings.port for x in containers if x.service == callee)
            assert int(port) == callee_port, f"{c.where}: {field} {address}, {callee} serves {callee_port}"
            assert any(p["port"] == callee_port for p in services[host]["spec"]["ports"]), f"{c.where}: {field}"
    # NetworkPolicies let the service's own ports in.
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for c in containers:
        labels = c.pod["metadata"].get("labels", {})
        mine = [p for p in policies if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]
        opened = {port["port"] for p in mine for rule in p["spec"].get("ingress", []) for port in rule.get("ports", [])}
        wanted = {c.settings.port} | ({c.settings.metrics_port} if c.service != "http" else set())
        assert wanted <= opened, (
            f"{c.where}: NetworkPolicies open {sorted(opened)}, the service serves {sorted(wanted)}"
        )


def test_gpu_counts_match_the_parallelism(variant: Variant) -> None:
    docs = render(variant)
    for c in k8s_containers(docs):
        gpus = int(c.spec.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        if c.service == "chat" and c.env.get("CHAT_ENGINE", "embedded") == "vllm":
            lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
            size = lws["spec"]["leaderWorkerTemplate"].get("size", 1)
            s = c.settings
            assert int(c.env["GPUS_PER_POD"]) == gpus, f"{c.where}: GPUS_PER_POD vs nvidia.com/gpu"
            assert size * gpus == s.vllm_tensor_parallel_size * s.vllm_pipeline_parallel_size, (
                f"{c.where}: {size} pods x {gpus} GPUs for TP {s.vllm_tensor_parallel_size} x PP "
                f"{s.vllm_pipeline_parallel_size}"
            )
            assert (s.vllm_distributed_executor_backend == "ray") == (size > 1), f"{c.where}: executor backend"
        elif variant.overlay == "cpu":
            assert gpus == 0, c.where


def test_autoscaled_workloads_set_no_replicas(variant: Variant) -> None:
    docs = render(variant)
    targets = [
        (d["spec"]["scaleTargetRef"]["kind"], d["spec"]["scaleTargetRef"]["name"])
        for d in docs
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    ]
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for key in targets:
        assert key in by_key, f"an autoscaler targets {key}, which is not rendered"
        assert "replicas" not in by_key[key]["spec"], f"{key} sets replicas although an autoscaler owns the count"
    assert len(targets) == len(set(targets)), "two autoscalers target the same workload"


def test_gpu_overlay_images_are_pinned_by_digest(variant: Variant) -> None:
    if variant.overlay != "gpu":
        return
    for doc in render(variant):
        templates = [doc["spec"]["template"]] if doc["kind"] == "Deployment" else []
        if doc["kind"] == "LeaderWorkerSet":
            templates = list(doc["spec"]["leaderWorkerTemplate"][k] for k in ("leaderTemplate", "workerTemplate"))
        for pod in templates:
            for container in pod["spec"]["containers"]:
                assert re.search(r"@sha256:[0-9a-f]{64}$", container["image"]), f"{container['image']} is not pinned"


# --- Docker Compose ---------------------------------------------------------------------------------------------


def compose_services(*files) -> Iterator[tuple[str, dict, BaseSettings]]:
    config = compose_config(*files)
    for name, service in config["services"].items():
        if "build" not in service:
            continue  # a third-party image (prometheus, grafana): its environment is its own business
        assert name in SETTINGS, f"compose service {name} builds an image of ours but is not a known service"
        where = f"compose ({', '.join(f.name for f in files)}) service {name}"
        env = dict(dockerfile_stages()[service["build"]["target"]].env)
        env.update(service.get("environment") or {})
        own = {k: v for k, v in env.items() if k in (service.get("environment") or {}) or k.startswith(PREFIXES[name])}
        check_names(name, own, where)
        yield name, service, load_settings(name, env, where)


COMPOSE_SETS = [(COMPOSE_FILE,), (COMPOSE_FILE, COMPOSE_CPU)]


@pytest.mark.parametrize("files", COMPOSE_SETS, ids=["gpu", "gpu+cpu"])
def test_compose_environment_ports_and_health_checks(files) -> None:
    seen = {}
    for name, service, s in compose_services(*files):
        seen[name] = s
        test = service["healthcheck"]["test"]
        published = {int(p["target"]) for p in service.get("ports", [])}
        stage = dockerfile_stages()[service["build"]["target"]]
        if name == "http":
            assert any(f"http://127.0.0.1:{s.port}/readyz" in part for part in test), f"{name}: {test}"
            assert "/readyz" in HTTP_ROUTES
            assert published == {s.port} and stage.exposed == {s.port}, name
        else:
            assert test[test.index("--address") + 1] == f"127.0.0.1:{s.port}", f"{name}: {test}"
            assert test[test.index("--service") + 1] == HEALTH_NAMES[name], f"{name}: {test}"
            assert s.metrics_port in published and s.metrics_host == "0.0.0.0", f"{name}: /metrics not published"
            assert stage.exposed == {s.port, s.metrics_port}, f"{name}: Dockerfile EXPOSE {stage.exposed}"
        assert s.host == "0.0.0.0", name
        assert go_seconds(service["stop_grace_period"]) > s.shutdown_grace_seconds, f"{name}: stop_grace_period"
    assert set(seen) == set(SETTINGS)
    ports = {name: s.port for name, s in seen.items()}
    for field, callee in (("tokenizer_address", "tokenizer"), ("chat_address", "chat"), ("tts_address", "tts")):
        assert getattr(seen["gateway"], field) == f"{callee}:{ports[callee]}", field
    assert seen["http"].gateway_address == f"gateway:{ports['gateway']}"


def go_seconds(duration: str) -> float:
    """A Go duration as Compose prints it (1m0s, 35s) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


# GPU memory outside the vLLM fractions, per service, in GB (docs/deploy.md, "GPU layout"): the tokenizer's vq06 on
# onnxruntime CUDA with its CUDA context; tts's decoder and the CUDA context of its service process.
GPU_GB = 80
OUTSIDE_FRACTION_GB = {"tokenizer": 2.0, "tts": 1.0}


def test_compose_gpu_layout_fits_one_8_gpu_host() -> None:
    per_gpu: dict[str, list[tuple[str, float]]] = {}
    for name, service, s in compose_services(COMPOSE_FILE):
        devices = [
            device_id
            for device in service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
            for device_id in device.get("device_ids", [])
        ]
        if name == "chat":
            share = s.vllm_gpu_memory_utilization
            assert len(devices) == s.vllm_tensor_parallel_size * s.vllm_pipeline_parallel_size, devices
        elif name == "tts":
            share = s.step_audio_gpu_memory_utilization + OUTSIDE_FRACTION_GB["tts"] / GPU_GB
        elif name == "tokenizer":
            share = OUTSIDE_FRACTION_GB["tokenizer"] / GPU_GB
        else:
            assert not devices, f"{name} reserves GPUs"
            continue
        assert devices, f"{name} reserves no GPU"
        for device_id in devices:
            per_gpu.setdefault(device_id, []).append((name, share))
    assert set(per_gpu) <= {str(i) for i in range(8)}, f"GPU ids beyond an 8-GPU host: {sorted(per_gpu)}"
    for device_id, users in per_gpu.items():
        # Keep ~2 % (1.6 GB of 80) for fragmentation and NCCL buffers.
        assert sum(share for _, share in users) <= 0.98, f"GPU {device_id} is over-committed: {users}"


def test_dockerfile_environment_is_settings_of_each_image_service() -> None:
    services = {"tokenizer", "chat", "tts", "gateway", "http"}
    checked = 0
    for stage in dockerfile_stages().values():
        service = next((s for s in services if stage.name == s or stage.name.startswith(f"{s}-")), None)
        if service is None or stage.name == "chat-embedded-wheels":
            continue
        own = {k: v for k, v in stage.env.items() if k.startswith(PREFIXES[service])}
        check_names(service, own, f"Dockerfile target {stage.name}")
        load_settings(service, own, f"Dockerfile target {stage.name}")
        checked += 1
    assert checked >= 8
