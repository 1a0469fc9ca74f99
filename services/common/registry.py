"""Choosing an engine by name from a service's registry (name -> factory)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

SettingsT = TypeVar("SettingsT")
EngineT = TypeVar("EngineT")


def create_engine(
    kind: str, engines: Mapping[str, Callable[[SettingsT], EngineT]], name: str, settings: SettingsT
) -> EngineT:
    """Build engine ``name``; an unknown name stops the service with the list of known ones."""
    try:
        factory = engines[name]
    except KeyError:
        raise SystemExit(f"unknown {kind} engine {name!r}; choose one of {sorted(engines)}") from None
    return factory(settings)
