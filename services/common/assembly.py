"""Assemble model files that pip data wheels carry in pieces, and verify them.

Some embedded models ship on PyPI split into several data-only wheels. We concatenate the parts
into a local directory once (an atomic rename, so a crash leaves no half file), verify the
sha256 of the result, and load from there. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PackagedFile:
    """A file assembled from ``parts`` (``package:relative/path`` each), with its sha256."""

    name: str
    parts: tuple[str, ...]
    sha256: str
    size: int


@dataclass(frozen=True)
class PackagedModel:
    """A model directory: assembled files plus files copied as they are."""

    name: str
    files: tuple[PackagedFile, ...]
    copies: tuple[str, ...] = field(default=())  # "package:relative/path", copied by basename


def package_path(spec: str) -> Path:
    """``package:relative/path`` → absolute path inside the installed package (no import)."""
    package, _, relative = spec.partition(":")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (run `make install`)")
    return Path(next(iter(found.submodule_search_locations))) / relative


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _assemble_file(spec: PackagedFile, target: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        for part in spec.parts:
            with package_path(part).open("rb") as handle:
                shutil.copyfileobj(handle, out, 16 * 1024 * 1024)
    temporary = Path(out.name)
    actual = sha256_of(temporary)
    if actual != spec.sha256:
        temporary.unlink()
        raise RuntimeError(
            f"{spec.name}: assembled sha256 {actual} does not match the pinned {spec.sha256}; "
            "reinstall the model packages at the pinned versions"
        )
    temporary.chmod(0o644)  # NamedTemporaryFile creates 0600; images run the services as another user
    os.replace(temporary, target)


def ensure_model(model: PackagedModel, directory: Path) -> Path:
    """Return ``directory`` holding the model, assembling it first if needed.

    An existing file is trusted when its size matches (hashing a GB at every start is slow);
    ``verify_model`` re-hashes on demand.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for spec in model.files:
        target = directory / spec.name
        if not target.exists() or target.stat().st_size != spec.size:
            _assemble_file(spec, target)
    for copy in model.copies:
        target = directory / Path(copy.partition(":")[2]).name
        if not target.exists():  # an assembled directory needs no packages (container images)
            shutil.copyfile(package_path(copy), target)
    return directory


def verify_model(model: PackagedModel, directory: Path) -> list[str]:
    """Names of files whose sha256 does not match (empty list: all good)."""
    return [spec.name for spec in model.files if sha256_of(directory / spec.name) != spec.sha256]
