"""Strict state-dict loading with one error that names every problem."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from services.tts.decoder.config import DecoderConfigError


class CheckpointMismatch(DecoderConfigError):
    """The checkpoint does not fit the architecture built from ``cosyvoice.yaml``."""

    def __init__(self, name: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: " + ", ".join(missing))
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected))
        if mismatched:
            parts.append(f"{len(mismatched)} wrong shape: " + ", ".join(mismatched))
        super().__init__(f"{name} does not match the model built from cosyvoice.yaml: " + "; ".join(parts))
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched


_PARAMETRIZED = re.compile(r"^(.*)\.parametrizations\.(\w+)\.original([01])$")


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept the two harmless spellings of the same file: a ``generator.`` prefix on every key
    (upstream strips it too) and the parametrization form of weight norm
    (``x.parametrizations.weight.original0/1`` = ``x.weight_g/weight_v``)."""
    if state and all(key.startswith("generator.") for key in state):
        state = {key[len("generator.") :]: value for key, value in state.items()}
    renamed = {}
    for key, value in state.items():
        match = _PARAMETRIZED.match(key)
        if match:
            key = f"{match.group(1)}.{match.group(2)}_{'g' if match.group(3) == '0' else 'v'}"
        renamed[key] = value
    return renamed


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle with objects, a Git LFS pointer, a truncated download…
        raise DecoderConfigError(
            f"{path}: not a readable torch state dict ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DecoderConfigError(f"{path}: expected a flat dict of tensors")
    return normalise_keys(state)


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Copy ``state`` into ``module``; any missing key, unexpected key or shape mismatch raises one
    ``CheckpointMismatch`` that lists them all."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {list(state[key].shape)} (expected {list(expected[key].shape)})"
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatch(name, missing, unexpected, mismatched)
    module.load_state_dict(state, strict=True)
