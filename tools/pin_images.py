"""Pin a kustomize overlay's images by digest (``make pin-images``; docs/deploy.md, "Images").

    python -m tools.pin_images --overlay deploy/k8s/overlays/gpu --registry registry.example.com/stepaudio --tag 1.4.0
    python -m tools.pin_images --overlay deploy/k8s/overlays/gpu --check

Each entry of the overlay's ``images:`` list becomes ``newName: <registry>/<image>`` and ``digest: sha256:…``, where
``<image>`` is the last path part of its current ``newName`` (``chat-vllm``) and the digest is the one the registry
holds for ``<registry>/<image>:<tag>``: the sha256 of the manifest (or multi-platform index) it serves for that tag,
read with ``skopeo inspect --raw`` (skopeo uses the same registry logins as docker and podman). ``--digest
IMAGE=sha256:…`` gives a digest directly instead (for instance from ``docker buildx build --push --metadata-file``).

A digest of all zeros is a placeholder that names no image: ``--check`` exits 1 while any entry has one, or has no
digest at all, so a pipeline can refuse to apply an overlay that is not pinned.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import yaml

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
PLACEHOLDER = "sha256:" + "0" * 64


class PinError(Exception):
    pass


def image_entries(kustomization: Path) -> list[dict]:
    entries = (yaml.safe_load(kustomization.read_text()) or {}).get("images") or []
    if not entries:
        raise PinError(f"{kustomization} has no `images:` entries to pin")
    return entries


def unpinned(kustomization: Path) -> list[str]:
    """Names of the entries without a real digest (none, malformed, or the placeholder)."""
    bad = []
    for entry in image_entries(kustomization):
        digest = str(entry.get("digest", ""))
        if not DIGEST.match(digest) or digest == PLACEHOLDER or "newTag" in entry:
            bad.append(entry["name"])
    return bad


def registry_digest(reference: str, skopeo: str, tls_verify: bool) -> str:
    """The digest ``reference`` (registry/repository:tag) resolves to: sha256 of the raw manifest served for it."""
    command = [skopeo, "inspect", "--raw", f"--tls-verify={'true' if tls_verify else 'false'}", f"docker://{reference}"]
    try:
        result = subprocess.run(command, capture_output=True, timeout=120, check=False)
    except FileNotFoundError:
        raise PinError(f"{skopeo} not found: install skopeo (Debian/Ubuntu: apt-get install skopeo)") from None
    if result.returncode != 0:
        raise PinError(f"cannot read {reference} from its registry: {result.stderr.decode().strip()}")
    return "sha256:" + hashlib.sha256(result.stdout).hexdigest()


def rewrite(text: str, name: str, new_name: str, digest: str) -> str:
    """``text`` (a kustomization) with the ``images:`` entry named ``name`` set to ``new_name`` + ``digest``.
    Only that entry's lines change; comments elsewhere stay."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.fullmatch(rf"(\s*)- name: {re.escape(name)}\s*", line)), None)
    if start is None:
        raise PinError(f"no `- name: {name}` entry")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    end = start + 1
    while end < len(lines) and lines[end].strip() and len(lines[end]) - len(lines[end].lstrip()) >= indent:
        end += 1
    pad = " " * indent
    entry = [lines[start], f"{pad}newName: {new_name}\n", f"{pad}digest: {digest}\n"]
    return "".join(lines[:start] + entry + lines[end:])


def pin(overlay: Path, registry: str, tag: str, given: dict[str, str], skopeo: str, tls_verify: bool) -> list[str]:
    kustomization = overlay / "kustomization.yaml"
    text = kustomization.read_text()
    report = []
    for entry in image_entries(kustomization):
        image = str(entry.get("newName", entry["name"])).rsplit("/", 1)[-1].split("@")[0].split(":")[0]
        new_name = f"{registry.rstrip('/')}/{image}" if registry else str(entry.get("newName", entry["name"]))
        digest = given.get(image) or given.get(entry["name"])
        if digest is None:
            if not tag:
                raise PinError(f"no digest for {image}: give --tag (to ask the registry) or --digest {image}=sha256:…")
            digest = registry_digest(f"{new_name}:{tag}", skopeo, tls_verify)
        if not DIGEST.match(digest) or digest == PLACEHOLDER:
            raise PinError(f"{image}: {digest!r} is not a sha256 image digest")
        text = rewrite(text, entry["name"], new_name, digest)
        report.append(f"{entry['name']} -> {new_name}@{digest}")
    kustomization.write_text(text)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overlay", type=Path, required=True, help="kustomize overlay directory")
    parser.add_argument("--registry", default="", help="registry and path the images were pushed to")
    parser.add_argument("--tag", default="", help="tag the images were pushed with")
    parser.add_argument("--digest", action="append", default=[], metavar="IMAGE=sha256:…", help="a known digest")
    parser.add_argument("--skopeo", default="skopeo", help="skopeo executable")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP / unverified TLS to the registry")
    parser.add_argument("--check", action="store_true", help="only check: exit 1 unless every image has a digest")
    args = parser.parse_args(argv)
    try:
        if args.check:
            bad = unpinned(args.overlay / "kustomization.yaml")
            if bad:
                print(f"{args.overlay}: not pinned by digest: {', '.join(bad)} (run make pin-images)", file=sys.stderr)
                return 1
            print(f"{args.overlay}: every image is pinned by digest")
            return 0
        given = dict(item.split("=", 1) for item in args.digest)
        for line in pin(args.overlay, args.registry, args.tag, given, args.skopeo, not args.insecure):
            print(line)
    except PinError as error:
        print(f"pin_images: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
