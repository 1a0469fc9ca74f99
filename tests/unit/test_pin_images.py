"""`make pin-images` against a real registry: Docker's registry (Debian's docker-registry, the CNCF distribution
server) on loopback, holding one small image per service pushed with skopeo. tools/pin_images.py must write the
digests the registry serves (its Docker-Content-Digest header) into a copy of the GPU overlay, so that
`kubectl kustomize` renders every container image as <registry>/<image>@sha256:…"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy_files import K8S, ROOT, kubectl, tool

IMAGES = ["gateway", "http", "tokenizer-gpu", "chat-vllm", "tts-gpu"]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def skopeo() -> str:
    return tool("skopeo", "Debian package skopeo")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """host:port of a registry on loopback, empty."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "registry")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    process = subprocess.Popen(
        [tool("docker-registry", "Debian package docker-registry"), "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {process.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_image(layout: Path, content: str) -> None:
    """A one-layer OCI image layout, tagged `v1`, whose only file holds ``content`` (so every image differs)."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        data = content.encode()
        info = tarfile.TarInfo("image.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = blob(layout, gzip.compress(tar_bytes.getvalue(), mtime=0))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes.getvalue()).hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **blob(layout, json.dumps(config).encode()),
        },
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    entry = {
        "mediaType": OCI_MANIFEST,
        **blob(layout, json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def push_images(registry: str, tmp_path: Path) -> dict[str, str]:
    """Push one image per service as <registry>/stepaudio/<image>:v1; the digest the registry serves for each."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    digests = {}
    for image in IMAGES:
        oci_image(tmp_path / "oci" / image, image)
        subprocess.run(
            [skopeo(), "copy", "--quiet", f"--policy={policy}", "--dest-tls-verify=false",
             f"oci:{tmp_path / 'oci' / image}:v1", f"docker://{registry}/stepaudio/{image}:v1"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        request = urllib.request.Request(
            f"http://{registry}/v2/stepaudio/{image}/manifests/v1", method="HEAD", headers={"Accept": OCI_MANIFEST}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            digests[image] = response.headers["Docker-Content-Digest"]
    assert len(set(digests.values())) == len(IMAGES)
    return digests


def pin_images(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tools.pin_images", "--skopeo", skopeo(), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def rendered_images(overlay: Path) -> set[str]:
    output = subprocess.run(
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    images = set()
    for doc in filter(None, yaml.safe_load_all(output)):
        spec = doc.get("spec", {})
        templates = [spec["template"]] if "template" in spec else []
        if doc["kind"] == "LeaderWorkerSet":
            group = spec["leaderWorkerTemplate"]
            templates = [group["leaderTemplate"], group["workerTemplate"]]
        images |= {c["image"] for pod in templates for c in pod["spec"]["containers"]}
    return images


def test_pin_images_writes_the_registry_digests_into_the_overlay(registry: str, tmp_path: Path) -> None:
    digests = push_images(registry, tmp_path)
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    overlay = tree / "overlays" / "gpu"
    before = (overlay / "kustomization.yaml").read_text()

    # As shipped, the overlay's digests are placeholders, and the check says so.
    check = pin_images("--overlay", str(overlay), "--check")
    assert check.returncode == 1 and "not pinned by digest" in check.stderr, check

    result = pin_images("--overlay", str(overlay), "--registry", f"{registry}/stepaudio", "--tag", "v1", "--insecure")
    assert result.returncode == 0, result.stderr
    assert rendered_images(overlay) == {f"{registry}/stepaudio/{image}@{digests[image]}" for image in IMAGES}
    assert pin_images("--overlay", str(overlay), "--check").returncode == 0
    after = (overlay / "kustomization.yaml").read_text()
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert comments == [line for line in after.splitlines() if line.lstrip().startswith("#")]

    # A tag the registry does not hold fails, naming it, and leaves the overlay as it was.
    missing = pin_images("--overlay", str(overlay), "--tag", "v2", "--insecure")
    assert missing.returncode == 1 and f"{registry}/stepaudio/gateway:v2" in missing.stderr, missing.stderr
    assert (overlay / "kustomization.yaml").read_text() == after
